//! End-to-end tests of the hub core over real sockets: geofence targeting,
//! acks seen by watchers, widening, restart and resume, slow consumers, and
//! a table of bad inputs.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use woodpecker::domain::Unit;

#[tokio::test]
async fn geofence_targets_inside_right_unit_and_fresh_only() {
    let app = TestApp::spawn().await;
    let mut inside = app
        .responder_at("v-in", Unit::Volunteer, offset(300.0, 0.0))
        .await;
    let mut outside = app
        .responder_at("v-out", Unit::Volunteer, offset(5000.0, 0.0))
        .await;
    let mut patrol = app
        .responder_at("pt-in", Unit::Patrol, offset(0.0, 300.0))
        .await;
    let out = app.issue(JIAXING, 1000.0, &["volunteer"]).await;
    assert_eq!(out["targeted"], 1, "{out}");
    assert_eq!(out["delivered_live"], 1);
    let alert = inside.recv_type("alert").await;
    assert_eq!(alert["alert"]["id"], out["alert"]["id"]);
    assert_eq!(alert["alert"]["status"], "active");
    assert!(alert["seq"].as_u64().unwrap_or(0) > 0);
    assert!(outside.silent_for(Duration::from_millis(300)).await);
    assert!(patrol.silent_for(Duration::from_millis(100)).await);

    // Preview counts the same people, per unit, and sends nothing.
    let (status, preview) = app
        .post(
            &app.police,
            "/api/v1/alerts/preview",
            json!({"kind": "missing_person", "title": "t", "lat": JIAXING.0, "lng": JIAXING.1,
                   "radius_m": 1000.0, "audience": ["volunteer", "patrol"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(preview["targeted"], 2, "{preview}");
    assert_eq!(preview["by_unit"]["patrol"], 1);
    assert!(patrol.silent_for(Duration::from_millis(200)).await);
    app.stop().await;
}

#[tokio::test]
async fn stale_location_is_not_targeted() {
    let app = TestApp::spawn_with(|s| s.geo.location_stale_s = 1).await;
    let _stale = app
        .responder_at("v-stale", Unit::Volunteer, offset(100.0, 0.0))
        .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut fresh = app
        .responder_at("v-fresh", Unit::Volunteer, offset(100.0, 0.0))
        .await;
    let out = app.issue(JIAXING, 1000.0, &["volunteer"]).await;
    assert_eq!(out["targeted"], 1, "{out}");
    fresh.recv_type("alert").await;
    app.stop().await;
}

#[tokio::test]
async fn ack_flow_is_streamed_to_watchers() {
    let app = TestApp::spawn().await;
    let mut r = app
        .responder_at("v-1", Unit::Volunteer, offset(100.0, 100.0))
        .await;
    let out = app.issue(JIAXING, 1000.0, &["volunteer"]).await;
    let id = out["alert"]["id"].as_str().expect("id").to_string();
    let mut coord = Client::hello(app.addr, &app.coordinator, None).await;
    let ok = coord.request(json!({"type": "watch", "alert": id})).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let summary = coord.recv_type("ack_summary").await;
    assert_eq!(summary["counts"]["targeted"], 1);
    assert_eq!(summary["counts"]["delivered"], 1);

    r.recv_type("alert").await;
    for state in ["received", "accepted"] {
        let reply = r
            .request(json!({"type": "ack", "alert": id, "state": state}))
            .await;
        assert_eq!(reply["type"], "ok", "{reply}");
        let ack = coord.recv_type("ack").await;
        assert_eq!(ack["responder"], "v-1");
        assert_eq!(ack["state"], state);
        assert_eq!(ack["unit"], "volunteer");
        let s = coord.recv_type("ack_summary").await;
        assert_eq!(s["counts"]["received"], 1);
    }
    let reply = r
        .request(json!({"type": "ack", "alert": id, "state": "arrived"}))
        .await;
    assert_eq!(reply["type"], "ok");
    coord.recv_type("ack").await;
    let s = coord.recv_type("ack_summary").await;
    assert_eq!(s["counts"]["accepted"], 1);
    assert_eq!(s["counts"]["arrived"], 1);

    // The record over HTTP agrees, with the whole history.
    let (_, acks) = app
        .get(&app.police, &format!("/api/v1/alerts/{id}/acks"))
        .await;
    assert_eq!(acks["responders"][0]["state"], "arrived", "{acks}");
    let (_, history) = app
        .get(&app.coordinator, &format!("/api/v1/alerts/{id}/history"))
        .await;
    assert_eq!(
        history["acks"].as_array().map(Vec::len),
        Some(3),
        "{history}"
    );

    // A responder not sent the alert cannot ack it.
    let mut other = app
        .responder_at("v-far", Unit::Volunteer, offset(9000.0, 0.0))
        .await;
    let e = other
        .request(json!({"type": "ack", "alert": id, "state": "accepted"}))
        .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    app.stop().await;
}

#[tokio::test]
async fn widening_reaches_only_the_newly_covered() {
    widen_then_cancel(TestApp::spawn().await).await;
}

/// Police work runs on the control thread; its fan-outs are handed to a
/// runtime worker or, with `control_busy_queue = 0` (what a saturated
/// runtime gets), offered from the control thread itself. Both reach the
/// same people in `seq` order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_outs_offered_from_the_control_thread_reach_the_same_people_in_order() {
    widen_then_cancel(TestApp::spawn_with(|s| s.server.control_busy_queue = 0).await).await;
}

async fn widen_then_cancel(app: TestApp) {
    let mut near = app
        .responder_at("v-near", Unit::Volunteer, offset(400.0, 0.0))
        .await;
    let mut far = app
        .responder_at("v-far", Unit::Volunteer, offset(0.0, 1500.0))
        .await;
    let mut police = Client::hello(app.addr, &app.police, None).await;
    let out = app.issue(JIAXING, 800.0, &["volunteer"]).await;
    let id = out["alert"]["id"].as_str().expect("id").to_string();
    assert_eq!(out["targeted"], 1);
    let first_seq = near.recv_type("alert").await["seq"].as_u64();
    police.recv_type("alert").await;

    let (status, upd) = app
        .post(
            &app.police,
            &format!("/api/v1/alerts/{id}/update"),
            json!({"radius_m": 2000.0}),
        )
        .await;
    assert_eq!(status, 200, "{upd}");
    assert_eq!(upd["newly_targeted"], 1);
    assert_eq!(upd["targeted"], 2);
    let got = far.recv().await;
    assert_eq!(
        got["type"], "alert",
        "the newly covered get the alert itself: {got}"
    );
    assert_eq!(got["alert"]["radius_m"], 2000.0);
    let u = near.recv().await;
    assert_eq!(u["type"], "alert_update", "{u}");
    assert_eq!(u["alert"]["version"], 2);
    assert!(u["seq"].as_u64() > first_seq, "{u}");
    let p = police.recv().await;
    assert_eq!(p["type"], "alert_update");
    assert!(
        police.silent_for(Duration::from_millis(200)).await,
        "staff see the change once"
    );

    // Cancelling tells everyone targeted.
    let (status, _) = app
        .post(
            &app.police,
            &format!("/api/v1/alerts/{id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    for c in [&mut near, &mut far] {
        let u = c.recv_type("alert_update").await;
        assert_eq!(u["alert"]["status"], "cancelled");
    }
    let (status, e) = app
        .post(
            &app.police,
            &format!("/api/v1/alerts/{id}/resolve"),
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "{e}");
    assert_eq!(e["error"]["code"], "conflict");
    app.stop().await;
}

#[tokio::test]
async fn a_responder_who_arrives_later_gets_the_active_alert() {
    let app = TestApp::spawn().await;
    let out = app.issue(JIAXING, 1000.0, &["volunteer"]).await;
    let mut late = app
        .responder_at("v-late", Unit::Volunteer, offset(200.0, 0.0))
        .await;
    let a = late.recv_type("alert").await;
    assert_eq!(a["alert"]["id"], out["alert"]["id"]);
    app.stop().await;
}

#[tokio::test]
async fn restart_keeps_every_acknowledged_write_and_resume_replays_missed_events() {
    let app = TestApp::spawn().await;
    let mut r = app
        .responder_at("v-1", Unit::Volunteer, offset(100.0, 0.0))
        .await;
    let first = app
        .issue_kind("flood_warning", JIAXING, 1000.0, &["volunteer"])
        .await;
    let first_id = first["alert"]["id"].as_str().expect("id").to_string();
    let a = r.recv_type("alert").await;
    let last_seen = a["seq"].as_u64().expect("seq");
    let ok = r
        .request(json!({"type": "ack", "alert": first_id, "state": "accepted"}))
        .await;
    assert_eq!(ok["type"], "ok");
    drop(r);

    // Missed while away: a second alert and the first one's cancellation.
    let second = app
        .issue(offset(300.0, 300.0), 1000.0, &["volunteer"])
        .await;
    let (s, _) = app
        .post(
            &app.police,
            &format!("/api/v1/alerts/{first_id}/cancel"),
            json!({"reason": "found safe"}),
        )
        .await;
    assert_eq!(s, 200);
    // Not for this responder: a patrol-only alert.
    app.issue_kind("flood_warning", JIAXING, 1000.0, &["patrol"])
        .await;

    let app = app.restart().await;
    let (_, acks) = app
        .get(&app.police, &format!("/api/v1/alerts/{first_id}/acks"))
        .await;
    assert_eq!(acks["responders"][0]["state"], "accepted", "{acks}");
    let (_, list) = app.get(&app.police, "/api/v1/alerts").await;
    assert_eq!(list["alerts"].as_array().map(Vec::len), Some(3));

    let token = app.responder_token("v-1", Unit::Volunteer);
    let mut r = Client::hello(app.addr, &token, Some(last_seen)).await;
    let m1 = r.recv().await;
    let m2 = r.recv().await;
    assert_eq!(m1["type"], "alert", "{m1}");
    assert_eq!(m1["alert"]["id"], second["alert"]["id"]);
    assert_eq!(m2["type"], "alert_update", "{m2}");
    assert_eq!(m2["alert"]["status"], "cancelled");
    assert!(m2["seq"].as_u64() > m1["seq"].as_u64());
    assert!(
        r.silent_for(Duration::from_millis(300)).await,
        "nothing else concerns v-1"
    );

    // The restarted hub still knows v-1's cell: a new alert reaches it.
    let third = app
        .issue_kind("flood_warning", JIAXING, 1000.0, &["volunteer"])
        .await;
    assert_eq!(third["targeted"], 1, "{third}");
    r.recv_type("alert").await;
    app.stop().await;
}

fn raise_nofile() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_while_a_thousand_others_get_the_alert() {
    raise_nofile();
    let app = TestApp::spawn_with(|s| {
        s.ws.outbox_capacity = 16;
        s.ws.write_timeout_s = 1;
        s.alerts.max_body_chars = 2000;
    })
    .await;
    // The slow client: a tiny receive buffer, and it stops reading.
    let slow_at = offset(-8000.0, 0.0);
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(app.addr).await.expect("connect");
    let (mut slow, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", app.addr), stream)
        .await
        .expect("ws");
    let token = app.responder_token("v-slow", Unit::Volunteer);
    slow.send(Message::text(
        json!({"type": "hello", "token": token}).to_string(),
    ))
    .await
    .expect("hello");
    slow.send(Message::text(
        json!({"type": "location", "lat": slow_at.0, "lng": slow_at.1}).to_string(),
    ))
    .await
    .expect("location");

    // A thousand others, connected concurrently, none near the slow one.
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let addr = app.addr;
        let token = app.responder_token(&format!("v-{i}"), Unit::Volunteer);
        let at = offset((i % 40) as f64 * 40.0, (i / 40) as f64 * 40.0);
        tasks.push(tokio::spawn(async move {
            let mut c = Client::hello(addr, &token, None).await;
            c.location(at).await;
            c
        }));
    }
    let mut others = Vec::new();
    for t in tasks {
        others.push(t.await.expect("join"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Alerts only the slow client is in, until the hub gives up on it.
    let body = "x".repeat(2000);
    let mut closed = false;
    for n in 0..3000 {
        app.issue_with(
            json!({"kind": "missing_person", "title": format!("filler {n}"), "body": body,
                             "lat": slow_at.0, "lng": slow_at.1, "radius_m": 300.0,
                             "audience": ["volunteer"]}),
        )
        .await;
        if n % 10 == 9 && app.metric("woodpecker_slow_sessions_total").await > 0 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow consumer was never closed");

    let out = app
        .issue(offset(400.0, 400.0), 5000.0, &["volunteer"])
        .await;
    assert_eq!(out["targeted"], 1000, "{out}");
    let id = out["alert"]["id"].clone();
    let mut waits = Vec::new();
    for mut c in others {
        let id = id.clone();
        waits.push(tokio::spawn(async move {
            let a = c.recv_type("alert").await;
            a["alert"]["id"] == id
        }));
    }
    let mut reached = 0;
    for w in waits {
        reached += usize::from(w.await.expect("join"));
    }
    assert_eq!(reached, 1000);

    // The slow one, reading again, finds its session ended (with the slow
    // code when the close frame could still be written), then resumes.
    let mut last_seq = 0;
    let mut close_code = None;
    while let Ok(Some(msg)) =
        tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut slow)).await
    {
        match msg {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                if let Some(s) = v["seq"].as_u64() {
                    last_seq = last_seq.max(s);
                }
            }
            Ok(Message::Close(Some(f))) => {
                close_code = Some(u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if let Some(code) = close_code {
        assert_eq!(code, 4010);
    }
    let mut again = Client::hello(app.addr, &token, Some(last_seq)).await;
    let missed = again.recv_type("alert").await;
    assert!(missed["seq"].as_u64().unwrap_or(0) > last_seq);
    app.stop().await;
}

#[tokio::test]
async fn bad_inputs_get_specific_errors_and_harm_no_one() {
    let app = TestApp::spawn().await;
    let mut bystander = app
        .responder_at("v-bystander", Unit::Volunteer, offset(50.0, 50.0))
        .await;
    let mut r = app
        .responder_at("v-1", Unit::Volunteer, offset(10.0, 10.0))
        .await;

    // Errors that keep the connection.
    let cases: &[(&str, &str)] = &[
        ("{not json", "bad_request"),
        ("[1,2]", "bad_request"),
        (r#"{"type":"teleport"}"#, "bad_request"),
        (r#"{"type":"ack","alert":"al_1"}"#, "bad_request"),
        (r#"{"type":"location","lat":91,"lng":0}"#, "bad_request"),
        (r#"{"type":"location","lat":30,"lng":-181}"#, "bad_request"),
        (
            r#"{"type":"location","lat":"north","lng":0}"#,
            "bad_request",
        ),
        (
            r#"{"type":"ack","alert":"al_doesnotexist","state":"accepted"}"#,
            "not_found",
        ),
        (
            r#"{"type":"ack","alert":"../../etc","state":"accepted"}"#,
            "bad_request",
        ),
        (r#"{"type":"watch","alert":"al_1"}"#, "forbidden"),
        (r#"{"type":"hello","token":"x"}"#, "bad_request"),
        (
            r#"{"type":"cell","alert":"al_1","cell":"nothex","state":"searching"}"#,
            "bad_request",
        ),
    ];
    for (raw, code) in cases {
        r.send_raw(raw).await;
        let e = r.recv().await;
        assert_eq!(e["type"], "error", "{raw} -> {e}");
        assert_eq!(e["code"], *code, "{raw} -> {e}");
        assert!(!e["message"].as_str().unwrap_or("").is_empty());
    }
    r.ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(r.recv().await["code"], "bad_request");
    let pong = r.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "the connection still works");

    // Staff may not do responder things.
    let mut police = Client::hello(app.addr, &app.police, None).await;
    let e = police
        .request(json!({"type": "location", "lat": 30.0, "lng": 120.0}))
        .await;
    assert_eq!(e["code"], "forbidden");

    // Errors that end the connection, each with its close code.
    let mut big = Client::hello(
        app.addr,
        &app.responder_token("v-big", Unit::Volunteer),
        None,
    )
    .await;
    big.send_raw(&format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    ))
    .await;
    assert_eq!(big.close_code().await, Some(1009));

    let forged = woodpecker::auth::Authority::new(
        &woodpecker::config::AuthSettings::default(),
        &woodpecker::config::Secret::new("another-key-another-key-another-key-0000"),
    )
    .expect("authority")
    .mint(
        "v-1",
        woodpecker::domain::Role::Police,
        None,
        "",
        Duration::from_secs(60),
    )
    .expect("mint");
    let expired = expired_token();
    let wrong_aud = token_with(
        json!({"sub": "x", "role": "police", "iss": "woodpecker", "aud": "elsewhere",
                                      "exp": now_s() + 600, "iat": now_s()}),
    );
    let none_alg = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&json!({"sub":"x","role":"police","iss":"woodpecker","aud":"woodpecker","exp": now_s() + 600}).to_string())
    );
    for token in [
        forged.as_str(),
        expired.as_str(),
        wrong_aud.as_str(),
        none_alg.as_str(),
        "garbage",
    ] {
        let mut ws = connect(app.addr).await;
        ws.send(Message::text(
            json!({"type": "hello", "token": token}).to_string(),
        ))
        .await
        .expect("send");
        let mut c = raw_client(ws);
        let e = c.recv().await;
        assert_eq!(e["code"], "unauthorized", "{token}: {e}");
        assert_eq!(c.close_code().await, Some(4001));
    }
    // The first message must be hello.
    let mut c = raw_client(connect(app.addr).await);
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["code"], "unauthorized");
    assert_eq!(c.close_code().await, Some(4001));
    // Hello never sent: closed after the timeout.
    let mut c = raw_client(connect(app.addr).await);
    assert_eq!(c.recv().await["code"], "unauthorized");
    assert_eq!(c.close_code().await, Some(4001));

    // HTTP: each bad request gets its code and status.
    let base = json!({"kind": "missing_person", "title": "t", "lat": 30.75, "lng": 120.75,
                      "radius_m": 1000.0, "audience": ["volunteer"]});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let responder = app.responder_token("v-1", Unit::Volunteer);
    let http_cases = vec![
        (
            app.police.clone(),
            with("lat", json!(95.0)),
            400,
            "bad_request",
        ),
        (
            app.police.clone(),
            with("lng", json!(-200.0)),
            400,
            "bad_request",
        ),
        (
            app.police.clone(),
            with("radius_m", json!(0)),
            400,
            "bad_request",
        ),
        (
            app.police.clone(),
            with("radius_m", json!(1.0e9)),
            400,
            "bad_request",
        ),
        (
            app.police.clone(),
            with("audience", json!([])),
            400,
            "bad_request",
        ),
        (
            app.police.clone(),
            with("audience", json!(["wizards"])),
            400,
            "bad_request",
        ),
        (
            app.police.clone(),
            with("title", json!("   ")),
            400,
            "bad_request",
        ),
        (
            app.police.clone(),
            with("urgency", json!("whenever")),
            400,
            "bad_request",
        ),
        (
            app.police.clone(),
            with("kind", json!("Drop Table")),
            400,
            "bad_request",
        ),
        (responder.clone(), base.clone(), 403, "forbidden"),
        (app.coordinator.clone(), base.clone(), 403, "forbidden"),
        (expired.clone(), base.clone(), 401, "unauthorized"),
        (forged.clone(), base.clone(), 401, "unauthorized"),
    ];
    for (token, body, status, code) in http_cases {
        let (s, v) = app.post(&token, "/api/v1/alerts", body.clone()).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body} -> {v}"
        );
    }
    let resp = app
        .http
        .post(app.url("/api/v1/alerts"))
        .bearer_auth(&app.police)
        .body("{oops")
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status().as_u16(), 400);
    let resp = app
        .http
        .get(app.url("/api/v1/alerts"))
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status().as_u16(), 401);
    let (s, v) = app.get(&app.police, "/api/v1/alerts/al_nope").await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, _) = app.get(&app.police, "/api/v1/alerts?status=bogus").await;
    assert_eq!(s, 400);
    let (s, _) = app.get(&app.police, "/api/v1/nothing-here").await;
    assert_eq!(s, 404);

    // After all that, everyone else is served as before.
    let out = app.issue(JIAXING, 1000.0, &["volunteer"]).await;
    assert_eq!(out["targeted"], 2, "{out}");
    bystander.recv_type("alert").await;
    r.recv_type("alert").await;
    let (_, list) = app.get(&app.police, "/api/v1/alerts").await;
    assert_eq!(
        list["alerts"].as_array().map(Vec::len),
        Some(1),
        "no bad request left a trace"
    );
    app.stop().await;
}

fn raw_client(
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> ClientNoHello {
    ClientNoHello { ws }
}

/// A client that has not (successfully) said hello.
struct ClientNoHello {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl ClientNoHello {
    async fn send(&mut self, v: serde_json::Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }
    async fn recv(&mut self) -> serde_json::Value {
        loop {
            match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut self.ws)).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    return serde_json::from_str(t.as_str()).expect("json");
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("no frame: {other:?}"),
            }
        }
    }
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut self.ws)).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => return Some(f.code.into()),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }
}

fn now_s() -> u64 {
    woodpecker::domain::now_ms() / 1000
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn token_with(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
    )
    .expect("encode")
}

fn expired_token() -> String {
    token_with(
        json!({"sub": "v-1", "role": "police", "iss": "woodpecker", "aud": "woodpecker",
                      "exp": now_s() - 3600, "iat": now_s() - 7200}),
    )
}

#[tokio::test]
async fn a_silent_peer_is_dropped_by_the_heartbeat() {
    let app = TestApp::spawn_with(|s| s.ws.heartbeat_s = 1).await;
    let c = Client::hello(app.addr, &app.responder_token("v-1", Unit::Volunteer), None).await;
    assert_eq!(c.welcome["heartbeat_s"], 1);
    // The client never reads, so it never answers the server's pings.
    let mut sessions = 1;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, h) = app.get(&app.police, "/healthz").await;
        sessions = h["sessions"].as_u64().unwrap_or(99);
        if sessions == 0 {
            break;
        }
    }
    assert_eq!(sessions, 0, "the dead peer is still registered");
    drop(c);
    app.stop().await;
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_and_shutdown_closes_with_1001() {
    let app = TestApp::spawn_with(|s| s.ws.max_connections = 2).await;
    let mut a = Client::hello(app.addr, &app.police, None).await;
    let _b = Client::hello(app.addr, &app.coordinator, None).await;
    let third = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr)).await;
    match third {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        other => panic!("expected 503, got {other:?}"),
    }
    let stopping = tokio::spawn(app.stop());
    assert_eq!(a.close_code().await, Some(1001));
    stopping.await.expect("stop");
}

#[tokio::test]
async fn invalid_config_names_the_setting() {
    let err = woodpecker::config::Settings::load(
        Some(std::path::Path::new("does/not/exist.toml")),
        &Default::default(),
    )
    .expect_err("missing file");
    assert!(err.to_string().contains("does/not/exist.toml"), "{err}");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[ws]\noutbox_capacity = 0\n").expect("write");
    let err =
        woodpecker::config::Settings::load(Some(&file), &Default::default()).expect_err("invalid");
    assert!(err.to_string().contains("ws.outbox_capacity"), "{err}");
    std::fs::write(&file, "[geo]\nresolution_typo = 3\n").expect("write");
    let err = woodpecker::config::Settings::load(Some(&file), &Default::default())
        .expect_err("unknown key");
    assert!(err.to_string().contains("resolution_typo"), "{err}");
}

#[tokio::test]
async fn the_binary_serves_and_its_tokens_are_accepted_and_env_overrides_apply() {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;
    let bin = env!("CARGO_BIN_EXE_woodpecker");
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().to_str().expect("utf8 path");

    // A bad value from the environment stops start-up and is named.
    let out = tokio::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data])
        .env("WOODPECKER__GEO__PRESENCE_RESOLUTION", "16")
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("geo.presence_resolution"), "{stderr}");

    let mut child = tokio::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data])
        .env("WOODPECKER__WS__HEARTBEAT_S", "7")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("in time")
        .expect("read")
        .expect("a line");
    let url = first
        .strip_prefix("listening on http://")
        .expect("first line names the address");
    let addr: std::net::SocketAddr = url.parse().expect("addr");

    let token = tokio::process::Command::new(bin)
        .args([
            "token",
            "--data-dir",
            data,
            "--sub",
            "v-9",
            "--role",
            "responder",
            "--unit",
            "patrol",
            "--ttl",
            "1h",
        ])
        .output()
        .await
        .expect("token");
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    let c = Client::hello(addr, &token, None).await;
    assert_eq!(c.welcome["user"]["sub"], "v-9");
    assert_eq!(c.welcome["user"]["unit"], "patrol");
    assert_eq!(
        c.welcome["heartbeat_s"], 7,
        "the environment override applied"
    );

    let bad = tokio::process::Command::new(bin)
        .args([
            "token",
            "--data-dir",
            data,
            "--sub",
            "x",
            "--role",
            "wizard",
        ])
        .output()
        .await
        .expect("token");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown role"));
    let _ = child.kill().await;
}

#[tokio::test]
async fn presence_counts_cells_without_identities_and_off_duty_stops_targeting() {
    let app = TestApp::spawn().await;
    let mut a = app
        .responder_at("v-a", Unit::Volunteer, offset(100.0, 100.0))
        .await;
    let _b = app
        .responder_at("v-b", Unit::Volunteer, offset(100.0, 100.0))
        .await;
    let _p = app
        .responder_at("pt-1", Unit::Patrol, offset(-600.0, 0.0))
        .await;
    let out = app.issue(JIAXING, 1000.0, &["volunteer", "patrol"]).await;
    let id = out["alert"]["id"].as_str().expect("id").to_string();
    let (s, fc) = app
        .get(&app.coordinator, &format!("/api/v1/alerts/{id}/presence"))
        .await;
    assert_eq!(s, 200, "{fc}");
    assert_eq!(fc["type"], "FeatureCollection");
    let features = fc["features"].as_array().expect("features");
    let total: u64 = features
        .iter()
        .map(|f| f["properties"]["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, 3);
    assert!(
        !fc.to_string().contains("v-a"),
        "no identities in presence: {fc}"
    );
    let ring = features[0]["geometry"]["coordinates"][0]
        .as_array()
        .expect("ring");
    assert_eq!(ring.first(), ring.last(), "closed ring");
    let (s, _) = app
        .get(
            &app.responder_token("v-a", Unit::Volunteer),
            &format!("/api/v1/alerts/{id}/presence"),
        )
        .await;
    assert_eq!(s, 403);

    // Names given in tokens show in the ack list once a responder answers.
    let named = app
        .authority
        .mint(
            "v-named",
            woodpecker::domain::Role::Responder,
            Some(Unit::Volunteer),
            "Zhang Wei",
            Duration::from_secs(60),
        )
        .expect("mint");
    let mut n = Client::hello(app.addr, &named, None).await;
    n.location(offset(50.0, 0.0)).await;
    n.recv_type("alert").await;
    let ok = n
        .request(json!({"type": "ack", "alert": id, "state": "accepted"}))
        .await;
    assert_eq!(ok["type"], "ok");
    let (_, acks) = app
        .get(&app.police, &format!("/api/v1/alerts/{id}/acks"))
        .await;
    let row = acks["responders"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["responder"] == "v-named").cloned())
        .expect("row");
    assert_eq!(row["name"], "Zhang Wei");

    // Off duty: forgotten at once, and across a restart.
    let ok = a.request(json!({"type": "off_duty"})).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let out = app.issue(JIAXING, 1000.0, &["volunteer"]).await;
    assert_eq!(out["targeted"], 2, "v-b and v-named, not v-a: {out}");
    drop(a);
    let app = app.restart().await;
    let out = app.issue(JIAXING, 1000.0, &["volunteer"]).await;
    assert_eq!(out["targeted"], 2, "{out}");
    app.stop().await;
}
