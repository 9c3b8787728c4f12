//! The search grid end to end over real sockets: concurrent accepts get
//! distinct cells, decline and start timeouts hand cells on, cleared gets
//! the next cell, found stands everyone down, coordinators assign by hand,
//! the GeoJSON is valid RFC 7946, and the grid survives a restart.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use woodpecker::domain::Unit;

async fn accept(c: &mut Client, alert: &str) -> Value {
    c.recv_type("alert").await;
    let ok = c
        .request(json!({"type": "ack", "alert": alert, "state": "accepted"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    c.recv_type("assignment").await
}

fn signed_area(ring: &[Value]) -> f64 {
    ring.windows(2)
        .map(|w| {
            let (a, b) = (&w[0], &w[1]);
            a[0].as_f64().unwrap_or(0.0) * b[1].as_f64().unwrap_or(0.0)
                - b[0].as_f64().unwrap_or(0.0) * a[1].as_f64().unwrap_or(0.0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accepts_never_share_a_cell() {
    let app = TestApp::spawn_with(|s| {
        s.ws.rate_per_s = 100.0;
    })
    .await;
    // 60 responders; a 500 m search circle has fewer cells than that.
    let mut people = Vec::new();
    for i in 0..60 {
        people.push(
            app.responder_at(
                &format!("v-{i}"),
                Unit::Volunteer,
                offset((i % 8) as f64 * 40.0, (i / 8) as f64 * 40.0),
            )
            .await,
        );
    }
    let out = app.issue(JIAXING, 500.0, &["volunteer"]).await;
    let id = out["alert"]["id"].as_str().expect("id").to_string();
    let (_, grid) = app
        .get(&app.coordinator, &format!("/api/v1/alerts/{id}/grid"))
        .await;
    let n_cells = grid["features"].as_array().map(Vec::len).unwrap_or(0);
    assert!(n_cells > 0 && n_cells < 60, "{n_cells} cells");

    // Everyone accepts at the same moment.
    let mut tasks = Vec::new();
    for mut c in people {
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            c.recv_type("alert").await;
            let ok = c
                .request(json!({"type": "ack", "alert": id, "state": "accepted"}))
                .await;
            assert_eq!(ok["type"], "ok", "{ok}");
            let got = c.try_recv(Duration::from_secs(3)).await;
            let cell = got
                .filter(|v| v["type"] == "assignment")
                .map(|v| v["cell"].as_str().unwrap_or("").to_string());
            (c, cell)
        }));
    }
    let mut cells = Vec::new();
    for t in tasks {
        let (_, cell) = t.await.expect("join");
        cells.extend(cell);
    }
    let distinct: HashSet<_> = cells.iter().collect();
    assert_eq!(distinct.len(), cells.len(), "a cell was given twice");
    assert_eq!(cells.len(), n_cells, "every cell is taken, the rest wait");

    let (_, grid) = app
        .get(&app.coordinator, &format!("/api/v1/alerts/{id}/grid"))
        .await;
    let assigned: Vec<_> = grid["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter(|f| f["properties"]["state"] == "assigned")
        .map(|f| {
            f["properties"]["assignee"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(assigned.len(), n_cells);
    assert_eq!(
        assigned.iter().collect::<HashSet<_>>().len(),
        n_cells,
        "one cell per responder"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_search_loop_decline_clear_found_and_resolve() {
    let app = TestApp::spawn().await;
    let mut a = app
        .responder_at("v-a", Unit::Volunteer, offset(50.0, 0.0))
        .await;
    let mut b = app
        .responder_at("v-b", Unit::Volunteer, offset(-50.0, 0.0))
        .await;
    let mut coord = Client::hello(app.addr, &app.coordinator, None).await;
    let out = app
        .issue_with(json!({"kind": "missing_person", "title": "Missing boy, 9", "lat": JIAXING.0, "lng": JIAXING.1,
                           "radius_m": 800.0, "audience": ["volunteer"], "subject": "child_7_12"}))
        .await;
    let id = out["alert"]["id"].as_str().expect("id").to_string();
    assert_eq!(
        coord.request(json!({"type": "watch", "alert": id})).await["type"],
        "ok"
    );
    coord.recv_type("ack_summary").await;
    let all = coord.recv_type("coverage").await;
    assert!(
        all["cells"].as_array().map(Vec::len).unwrap_or(0) > 10,
        "{all}"
    );
    assert_eq!(all["covered_ratio"], 0.0);

    // GeoJSON: closed, counter-clockwise rings; weights sum to 1, highest first near the centre.
    let (status, fc) = app
        .get(&app.coordinator, &format!("/api/v1/alerts/{id}/grid"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(fc["type"], "FeatureCollection");
    let mut total = 0.0;
    for f in fc["features"].as_array().expect("features") {
        let ring = f["geometry"]["coordinates"][0].as_array().expect("ring");
        assert_eq!(ring.first(), ring.last(), "closed ring");
        assert!(signed_area(ring) > 0.0, "counter-clockwise exterior");
        total += f["properties"]["weight"].as_f64().expect("weight");
    }
    assert!((total - 1.0).abs() < 1e-9, "weights sum to {total}");

    let first = accept(&mut a, &id).await;
    assert_eq!(
        first["priority"], 1,
        "the most probable cell first: {first}"
    );
    assert_eq!(first["boundary"].as_array().map(Vec::len), Some(6));
    let cov = coord.recv_type("coverage").await;
    assert_eq!(cov["cells"][0]["state"], "assigned");

    // Starting, then clearing, brings the next cell at once.
    let cell = first["cell"].as_str().expect("cell").to_string();
    let r = a
        .request(json!({"type": "cell", "alert": id, "cell": cell, "state": "searching"}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let r = a
        .request(json!({"type": "cell", "alert": id, "cell": cell, "state": "cleared"}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let next = a.recv_type("assignment").await;
    assert_ne!(next["cell"], first["cell"]);
    let cov = loop {
        let c = coord.recv_type("coverage").await;
        if c["covered_ratio"].as_f64().unwrap_or(0.0) > 0.0 {
            break c;
        }
    };
    assert!(cov["covered_ratio_weighted"].as_f64().unwrap_or(0.0) > 0.0);

    // Someone else may not report a cell that is not theirs.
    b.recv_type("alert").await;
    let e = b
        .request(json!({"type": "cell", "alert": id, "cell": next["cell"], "state": "cleared"}))
        .await;
    assert_eq!(e["code"], "forbidden", "{e}");

    // Declining gives the cell back; a coordinator hands it to b by hand.
    let taken = next["cell"].as_str().expect("cell").to_string();
    let ok = a
        .request(json!({"type": "ack", "alert": id, "state": "declined"}))
        .await;
    assert_eq!(ok["type"], "ok");
    let revoked = a.recv_type("assignment_revoked").await;
    assert_eq!(revoked["cell"], taken.as_str());
    let ok = b
        .request(json!({"type": "ack", "alert": id, "state": "accepted"}))
        .await;
    assert_eq!(ok["type"], "ok");
    let b_first = b.recv_type("assignment").await;
    assert_eq!(
        b_first["cell"],
        taken.as_str(),
        "the returned cell is the best one left"
    );
    // The coordinator sends b somewhere else by hand.
    let (_, fc) = app
        .get(&app.coordinator, &format!("/api/v1/alerts/{id}/grid"))
        .await;
    let elsewhere = fc["features"]
        .as_array()
        .expect("features")
        .iter()
        .find(|f| f["properties"]["state"] == "unassigned")
        .and_then(|f| f["properties"]["cell"].as_str().map(str::to_string))
        .expect("an unassigned cell");
    let (s, v) = app
        .post(
            &app.coordinator,
            &format!("/api/v1/alerts/{id}/assign"),
            json!({"cell": elsewhere, "responder": "v-b"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let manual = b.recv_type("assignment").await;
    assert_eq!(manual["cell"], elsewhere.as_str());
    let taken = elsewhere;
    let (s, v) = app
        .post(
            &app.responder_token("v-b", Unit::Volunteer),
            &format!("/api/v1/alerts/{id}/assign"),
            json!({"cell": taken}),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, _) = app
        .post(
            &app.coordinator,
            &format!("/api/v1/alerts/{id}/assign"),
            json!({"cell": "nothex", "responder": "v-b"}),
        )
        .await;
    assert_eq!(s, 400);

    // Found: everyone targeted is told to stand down; police resolve.
    let r = b
        .request(json!({"type": "cell", "alert": id, "cell": taken, "state": "found"}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    for c in [&mut a, &mut b] {
        let u = c.recv_type("alert_update").await;
        assert_eq!(u["alert"]["status"], "found");
    }
    let u = coord.recv_type("alert_update").await;
    assert_eq!(u["alert"]["status"], "found");
    let (s, v) = app
        .post(
            &app.police,
            &format!("/api/v1/alerts/{id}/resolve"),
            json!({"outcome": "found safe at the library"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["alert"]["status"], "resolved");
    let (_, h) = app
        .get(&app.police, &format!("/api/v1/alerts/{id}/history"))
        .await;
    assert!(
        h["cells"].as_array().map(Vec::len).unwrap_or(0) > 5,
        "cell changes on the record"
    );

    // After a restart the grid is as it was.
    let app = app.restart().await;
    let (_, fc) = app
        .get(&app.coordinator, &format!("/api/v1/alerts/{id}/grid"))
        .await;
    let found = fc["features"]
        .as_array()
        .expect("features")
        .iter()
        .find(|f| f["properties"]["cell"] == taken.as_str())
        .cloned()
        .expect("cell");
    assert_eq!(found["properties"]["state"], "found");
    assert_eq!(found["properties"]["assignee"], "v-b");
    app.stop().await;
}

#[tokio::test]
async fn a_cell_not_started_in_time_goes_to_the_next_searcher() {
    let app = TestApp::spawn_with(|s| s.grid.start_timeout_s = 1).await;
    let mut slow = app
        .responder_at("v-slow", Unit::Volunteer, offset(30.0, 0.0))
        .await;
    let mut keen = app
        .responder_at("v-keen", Unit::Volunteer, offset(-30.0, 0.0))
        .await;
    // One-cell grid: a tiny radius around a cell centre.
    let out = app.issue(JIAXING, 150.0, &["volunteer"]).await;
    let id = out["alert"]["id"].as_str().expect("id").to_string();
    let (_, fc) = app
        .get(&app.coordinator, &format!("/api/v1/alerts/{id}/grid"))
        .await;
    assert_eq!(fc["features"].as_array().map(Vec::len), Some(1), "{fc}");
    let got = accept(&mut slow, &id).await;
    keen.recv_type("alert").await;
    let ok = keen
        .request(json!({"type": "ack", "alert": id, "state": "accepted"}))
        .await;
    assert_eq!(ok["type"], "ok");
    // v-slow never reports searching: the cell moves to v-keen.
    let revoked = slow.recv_type("assignment_revoked").await;
    assert_eq!(revoked["cell"], got["cell"]);
    assert_eq!(revoked["reason"], "start_timeout");
    let moved = keen.recv_type("assignment").await;
    assert_eq!(moved["cell"], got["cell"]);
    app.stop().await;
}

#[tokio::test]
async fn coordinators_exclude_and_reweight_cells() {
    let app = TestApp::spawn().await;
    let out = app.issue(JIAXING, 600.0, &["volunteer"]).await;
    let id = out["alert"]["id"].as_str().expect("id").to_string();
    let (_, fc) = app
        .get(&app.coordinator, &format!("/api/v1/alerts/{id}/grid"))
        .await;
    let cells: Vec<String> = fc["features"]
        .as_array()
        .expect("features")
        .iter()
        .map(|f| f["properties"]["cell"].as_str().unwrap_or("").to_string())
        .collect();
    let lake = &cells[0];
    let (s, v) = app
        .post(
            &app.coordinator,
            &format!("/api/v1/alerts/{id}/cells"),
            json!({"cells": [lake], "action": "exclude"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = app
        .post(
            &app.coordinator,
            &format!("/api/v1/alerts/{id}/cells"),
            json!({"cells": [&cells[1]], "action": "adjust", "factor": 3.0}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = app
        .post(
            &app.coordinator,
            &format!("/api/v1/alerts/{id}/cells"),
            json!({"cells": [&cells[1]], "action": "adjust", "factor": -1.0}),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
    let (_, fc) = app
        .get(&app.coordinator, &format!("/api/v1/alerts/{id}/grid"))
        .await;
    let mut total = 0.0;
    for f in fc["features"].as_array().expect("features") {
        let p = &f["properties"];
        if p["cell"] == lake.as_str() {
            assert_eq!(p["state"], "excluded");
        } else {
            total += p["weight"].as_f64().unwrap_or(0.0);
        }
    }
    assert!(
        (total - 1.0).abs() < 1e-9,
        "renormalized without the lake: {total}"
    );
    // An unknown lost-person category is refused before anything is sent.
    let (s, v) = app
        .post(
            &app.police,
            "/api/v1/alerts",
            json!({"kind": "missing_person", "title": "t", "lat": JIAXING.0,
              "lng": JIAXING.1, "radius_m": 500.0, "audience": ["volunteer"], "subject": "dragon"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    // A non-searchable kind has no grid.
    let flood = app
        .issue_kind("flood_warning", JIAXING, 600.0, &["volunteer"])
        .await;
    let (s, v) = app
        .get(
            &app.coordinator,
            &format!(
                "/api/v1/alerts/{}/grid",
                flood["alert"]["id"].as_str().unwrap_or("")
            ),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    app.stop().await;
}
