//! Benches of the fan-out path, each beside its naive baseline so the
//! ratio is printed in the same run:
//!
//! - recipient selection (occupied parent cells with their reach; the
//!   previous H3 cover + cell buckets) vs a scan of everyone;
//! - one alert encoded once and enqueued to N sessions vs one encoding per
//!   recipient;
//! - durable ack ingestion with grouped commits vs one commit per ack.
//!
//! Run: `cargo bench --bench fanout` (add `-- selection` etc. to filter).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use woodpecker::domain::{AckState, AlertId, AlertStatus, LatLng, Principal, Role, Unit, UnitSet};
use woodpecker::geo;
use woodpecker::hub::{Hub, Outgoing, PresenceIndex, ResponderId, SessionQueue};
use woodpecker::protocol::{AckRecord, Alert, AlertEventKind, alert_frame};
use woodpecker::store::sqlite::SqliteStore;
use woodpecker::store::{Store, Write};

const CITY_CENTRE: (f64, f64) = (30.7522, 120.7585);
/// Responders are spread uniformly over a 40 km × 40 km square (a city and
/// its suburbs), so density is the same for every population size.
const CITY_HALF_SIDE_M: f64 = 20_000.0;

fn point(north_m: f64, east_m: f64) -> LatLng {
    let lat = CITY_CENTRE.0 + north_m / 111_320.0;
    let lng = CITY_CENTRE.1 + east_m / (111_320.0 * CITY_CENTRE.0.to_radians().cos());
    LatLng { lat, lng }
}

fn random_point(rng: &mut StdRng) -> LatLng {
    point(
        rng.random_range(-CITY_HALF_SIDE_M..CITY_HALF_SIDE_M),
        rng.random_range(-CITY_HALF_SIDE_M..CITY_HALF_SIDE_M),
    )
}

/// The naive design: every responder's cell centre in one array, scanned
/// with a great-circle distance per responder.
struct NaiveIndex {
    people: Vec<(LatLng, Unit, u64)>,
}

impl NaiveIndex {
    fn select(&self, centre: LatLng, radius_m: f64, units: UnitSet, fresh_after: u64) -> Vec<u32> {
        self.people
            .iter()
            .enumerate()
            .filter(|(_, (p, u, seen))| {
                *seen >= fresh_after
                    && units.contains(*u)
                    && geo::distance_m(*p, centre) <= radius_m
            })
            .map(|(i, _)| i as u32)
            .collect()
    }
}

fn populations(n: usize) -> (PresenceIndex, NaiveIndex) {
    let res = geo::resolution(9).expect("res");
    let mut rng = StdRng::seed_from_u64(7);
    let mut idx = PresenceIndex::new();
    let mut naive = NaiveIndex {
        people: Vec::with_capacity(n),
    };
    for i in 0..n {
        let p = random_point(&mut rng);
        let unit = Unit::ALL[i % 3];
        let cell = geo::cell_at(p, res).expect("cell");
        let sub: Arc<str> = format!("r{i}").into();
        idx.set_place(&sub, unit, cell, 1_000);
        naive.people.push((geo::center(cell), unit, 1_000));
    }
    (idx, naive)
}

fn selection(c: &mut Criterion) {
    let res = geo::resolution(9).expect("res");
    let centre = point(1234.0, -567.0);
    let units = UnitSet::all();
    for n in [10_000usize, 100_000, 1_000_000] {
        let (idx, naive) = populations(n);
        let mut group = c.benchmark_group(format!("selection/{n}_responders"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for radius in [500.0, 2_000.0, 10_000.0] {
            let mut out: Vec<ResponderId> = Vec::new();
            idx.select_into(
                &geo::cover(centre, radius, res).expect("cover"),
                units,
                0,
                &mut out,
            );
            assert_eq!(
                out.len(),
                naive.select(centre, radius, units, 0).len(),
                "same recipients"
            );
            let mut by_parents = Vec::new();
            idx.select_circle(centre, radius, units, 0, &mut by_parents);
            assert_eq!(by_parents.len(), out.len(), "same recipients");
            group.throughput(Throughput::Elements(out.len().max(1) as u64));
            // What the hub does: occupied parent cells near the circle.
            group.bench_with_input(
                BenchmarkId::new("parent_buckets", radius),
                &radius,
                |b, &r| {
                    let mut out = Vec::new();
                    b.iter(|| {
                        out.clear();
                        idx.select_circle(centre, r, units, 0, &mut out);
                        black_box(out.len())
                    })
                },
            );
            // The previous design: the circle's H3 cover, then cell buckets.
            group.bench_with_input(BenchmarkId::new("h3_buckets", radius), &radius, |b, &r| {
                let mut out = Vec::new();
                b.iter(|| {
                    out.clear();
                    let cells = geo::cover(centre, r, res).expect("cover");
                    idx.select_into(&cells, units, 0, &mut out);
                    black_box(out.len())
                })
            });
            group.bench_with_input(BenchmarkId::new("naive_scan", radius), &radius, |b, &r| {
                b.iter(|| black_box(naive.select(centre, r, units, 0).len()))
            });
        }
        group.finish();
    }
}

fn sample_alert() -> Alert {
    Alert {
        id: AlertId::parse("al_0123456789abcdef").expect("id"),
        kind: "missing_person".into(),
        status: AlertStatus::Active,
        title: "Missing child, 12, red jacket, last seen at the south gate".into(),
        body: "Xiao Mei, 12 years old, 1.45 m, red jacket, blue jeans, white trainers. \
               Last seen 18:40 near the south gate of the People's Park. Please look around \
               bus stops, shops and the canal path and report anything you see."
            .into(),
        center: LatLng {
            lat: 30.7522,
            lng: 120.7585,
        },
        radius_m: 2000.0,
        audience: vec![Unit::Volunteer, Unit::Patrol, Unit::Staff],
        urgency: "immediate".into(),
        severity: "severe".into(),
        issued_at: 1_764_790_000_000,
        issued_by: "p-1".into(),
        expires_at: 1_764_876_400_000,
        version: 1,
        subject: Some("child_7_12".into()),
        outcome: None,
        updated_at: 1_764_790_000_000,
    }
}

fn enqueue(c: &mut Criterion) {
    let alert = sample_alert();
    let res = geo::resolution(9).expect("res");
    let cell = geo::cell_at(alert.center, res).expect("cell");
    for n in [1_000usize, 10_000, 19_000] {
        let hub = Hub::new();
        let mut receivers = Vec::with_capacity(n);
        let mut rids = Vec::with_capacity(n);
        for i in 0..n {
            let queue = Arc::new(SessionQueue::new(8));
            let p = Principal {
                sub: format!("r{i}").into(),
                role: Role::Responder,
                unit: Some(Unit::Volunteer),
                name: String::new(),
            };
            hub.register(&p, queue.clone());
            rids.push(hub.set_place(&p.sub, Unit::Volunteer, cell, 1));
            receivers.push(queue);
        }
        let mut taken = Vec::new();
        let mut drain = |receivers: &mut Vec<Arc<SessionQueue>>| {
            for q in receivers.iter() {
                q.take_batch(usize::MAX, &mut taken);
                taken.clear();
            }
        };
        let mut group = c.benchmark_group(format!("enqueue/{n}_sessions"));
        group
            .sample_size(30)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function("encode_once_shared_bytes", |b| {
            b.iter_batched(
                || drain(&mut receivers),
                |_| {
                    let frame = alert_frame(AlertEventKind::Alert, 42, &alert);
                    let d = hub.deliver(&rids, &Outgoing::new(42, frame), false);
                    black_box(d.frames)
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function("naive_encode_per_recipient", |b| {
            b.iter_batched(
                || drain(&mut receivers),
                |_| {
                    let mut frames = 0;
                    for rid in &rids {
                        let frame = alert_frame(AlertEventKind::Alert, 42, &alert);
                        frames += hub
                            .deliver(std::slice::from_ref(rid), &Outgoing::new(42, frame), false)
                            .frames;
                    }
                    black_box(frames)
                },
                BatchSize::PerIteration,
            )
        });
        group.finish();
    }
}

fn ack_write(alert: &AlertId, i: usize) -> Write {
    Write::Ack(AckRecord {
        alert: alert.clone(),
        responder: format!("r{i}"),
        name: String::new(),
        unit: Unit::Volunteer,
        state: AckState::Received,
        at: 1,
    })
}

fn acks(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(SqliteStore::open(dir.path(), 4096).expect("store"));
    let alert = AlertId::parse("al_bench").expect("id");
    let mut group = c.benchmark_group("acks");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    const BURST: usize = 2_000;
    group.throughput(Throughput::Elements(BURST as u64));
    group.bench_function("grouped_commits_2000_concurrent", |b| {
        b.to_async(&runtime).iter(|| {
            let store = store.clone();
            let alert = alert.clone();
            async move {
                let mut pending = Vec::with_capacity(BURST);
                for i in 0..BURST {
                    pending.push(store.commit(vec![ack_write(&alert, i)]));
                }
                for p in pending {
                    p.await.expect("commit");
                }
            }
        })
    });
    const SERIAL: usize = 50;
    group.throughput(Throughput::Elements(SERIAL as u64));
    group.bench_function("naive_one_commit_per_ack_50", |b| {
        b.to_async(&runtime).iter(|| {
            let store = store.clone();
            let alert = alert.clone();
            async move {
                for i in 0..SERIAL {
                    store
                        .commit(vec![ack_write(&alert, i)])
                        .await
                        .expect("commit");
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, selection, enqueue, acks);
criterion_main!(benches);
