//! Single sign-on: the identity provider's JWTs as bearer tokens. The
//! provider is a local HTTP server publishing a JWKS; tokens are signed
//! here with a test-only key pair.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use common::http_server::TestServer;
use common::server::{Server, json_of, write_config};

const ISSUER: &str = "https://sso.example.com/realms/acme";
const AUDIENCE: &str = "steward";
const KID: &str = "acme-2026";

/// A test-only RSA key pair (PKCS#1 DER, base64): it signs nothing real.
const PRIVATE_KEY_DER: &str = "MIIEpQIBAAKCAQEAtx7d+zQXY3vQxDqIU7DIPQ3Fi7sIMfoPbYRwGZWDJKIWNmd/rK4to2j8uPqtqiQM7gtP2MMS4na9c/XlVbJqt4xHlIO/T8EW8NUwwf3XnO8sjVo3ZBA9h2SOt37Qx9Z6XM3mVnR50Psqwr2JYV+QS+D9F6BmSLgR0+CYWRbGAaYJx9n1iTgV/IgTMfO2EPg+0pF8KGCbgvdi2KKCK/AUjMleouiVYLt7dK+N9clmxz0YmpxvblQaMoTg2s3sKM9YK+JYZJ9R4dudxkKzaiRJzRMK5iFo+XC8x9QJi9ShrtANMlnuMgq6ktQaGinVp/0mASeRDVsdqE6AQMZYk/4+twIDAQABAoIBAEACiazAGjbbtm+JWFMM1gnFcRq1X5l8o/zv0PGYejWJdQNCbXYykmBvF/wfICp7nItvJ9OI6OaBhBrvRuGMUtJjNjg7T1n1EGxR0U/WSBKi5ito8DjJloBnzZ1ltlxMZAxhqtTotRYwXdOhxk5jxcBIXp/uISLlONIbzZVCqSc0x4TN1PpYZ9VlGp7DZ2CQFQt5wFq448z6G6+SeB/1Jax4VNYrntct4wFDZqHNTOzCna59s/jazmoM3T6MgMD6vDwvUxoHoCtakMdyshfqE1LgAqluFBvtJfHh+qD+p871Ismn6HZhzKyXx8bVwX2KByb82UxsTA6Z6wTD5SPYO6ECgYEA6+Kpek4+P38obbc3xMB6xAU0vmYr+M/bNjNAG0YwDVCbIMIBokPQMHdqmRjrX+WSPUTtBCqh94iQYDqEqkjY0TbyZxN71mc8COnwUa9CCwrZ4W+ssq68PzWacOVmHXhZs2KyFmN2JLkkQN1aSeTSpCX5fY5L5bL0yCRIo/t2zeECgYEAxrxbpZY5znfo6E0Z6SVccg02WKG5GjpPfNihdavmdnxDU0dGm0qu726IlSANLrD+pZI0Qsysr0SZ7qeyrBqDkwKCLf4eJ8BYspo6aq96WAxK1asgRi9snAW9nceZ57lQuOOzgh1Za1TBqa5278TNjtXsFGMkvG6qVWELXAPur5cCgYEAxniSLKxEx9xPwfDU5aEmKmRO+pyxBsqtIS+CEvC9YZaez7Ms+MCiHQV9FY/YC3n3z8F8w3KzkLjA8ZaLJVPhyja3Qm8sVTvLUZy0baZOpUfeB0aVQkqvbWfGqJL7lnQ61SqHuTq6ny+AB2u3mlEDwsWI5FGkHoKyXuvYitD8J0ECgYEAoaSowkkrIXVEelXj4k9iHt4COxrnTJ7q8jfdM7Gq1OqDdCQAGOUo3lRAQVL9heGubYs6eK6zMieRMJ0z5Wn3ZMZgjfooGtsHCdYJ96Zc02rEH4B90rhWFZ1RuhiUZPbE4m1KH2Wxymv4zQO7d4/SRgBXccmmIqG8Z490RtZn+GcCgYEA5KApexeZ5jAAtllImfAxCBp+hPYqmI4BK/PRDUYQKV++HeD0ZPsVssGpIzg8sfDiz2a4eQ671q/9cSlBTMV5INtOKpgpbPGwz0rlWG/QaN1x3zfO+qdUFaaBUA0vqtH7Dwyv7mW3JxuVvN4el68oMVoxw+hPfNmeQFkt8kCr0ng=";
/// Its public modulus and exponent, base64url, as a JWKS lists them.
const MODULUS: &str = "tx7d-zQXY3vQxDqIU7DIPQ3Fi7sIMfoPbYRwGZWDJKIWNmd_rK4to2j8uPqtqiQM7gtP2MMS4na9c_XlVbJqt4xHlIO_T8EW8NUwwf3XnO8sjVo3ZBA9h2SOt37Qx9Z6XM3mVnR50Psqwr2JYV-QS-D9F6BmSLgR0-CYWRbGAaYJx9n1iTgV_IgTMfO2EPg-0pF8KGCbgvdi2KKCK_AUjMleouiVYLt7dK-N9clmxz0YmpxvblQaMoTg2s3sKM9YK-JYZJ9R4dudxkKzaiRJzRMK5iFo-XC8x9QJi9ShrtANMlnuMgq6ktQaGinVp_0mASeRDVsdqE6AQMZYk_4-tw";
const EXPONENT: &str = "AQAB";
/// Its public key as PEM, the "secret" of the HS256 key-confusion forgery.
const PUBLIC_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtx7d+zQXY3vQxDqIU7DI\nPQ3Fi7sIMfoPbYRwGZWDJKIWNmd/rK4to2j8uPqtqiQM7gtP2MMS4na9c/XlVbJq\nt4xHlIO/T8EW8NUwwf3XnO8sjVo3ZBA9h2SOt37Qx9Z6XM3mVnR50Psqwr2JYV+Q\nS+D9F6BmSLgR0+CYWRbGAaYJx9n1iTgV/IgTMfO2EPg+0pF8KGCbgvdi2KKCK/AU\njMleouiVYLt7dK+N9clmxz0YmpxvblQaMoTg2s3sKM9YK+JYZJ9R4dudxkKzaiRJ\nzRMK5iFo+XC8x9QJi9ShrtANMlnuMgq6ktQaGinVp/0mASeRDVsdqE6AQMZYk/4+\ntwIDAQAB\n-----END PUBLIC KEY-----\n";

/// Two CAB members must approve; the CAB is filled only by the identity
/// provider.
const CHANGE_BY_TWO: &str = "name: change-by-two\nversion: 1\nsteps:\n  - id: cab\n    approval:\n      approvers: [group:cab]\n      quorum: 2\n";
const CHANGE: &str = "name: change\nversion: 1\nsteps:\n  - id: cab\n    approval:\n      approvers: [group:cab]\n  - id: done\n    uses: transform\n    with: { approved_by: \"${{ steps.cab.output.approved_by }}\" }\noutput: ${{ steps.done.output }}\n";

fn jwks(with_key: bool) -> Vec<u8> {
    let mut keys =
        vec![json!({"kty": "RSA", "kid": "acme-2025", "use": "enc", "n": MODULUS, "e": EXPONENT})];
    if with_key {
        keys.push(json!({"kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256", "n": MODULUS, "e": EXPONENT}));
    }
    json!({ "keys": keys }).to_string().into_bytes()
}

/// An identity provider whose JWKS lists the signing key once `serving` is set.
fn identity_provider(serving: Arc<AtomicBool>) -> TestServer {
    TestServer::start(move |request, _| {
        if request.path != "/realms/acme/protocol/openid-connect/certs" {
            return (404, Vec::new(), Vec::new());
        }
        (
            200,
            vec![("content-type".into(), "application/json".into())],
            jwks(serving.load(Ordering::SeqCst)),
        )
    })
}

fn start(idp: &TestServer) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(workflows.join("change.yaml"), CHANGE).unwrap();
    std::fs::write(workflows.join("change-by-two.yaml"), CHANGE_BY_TWO).unwrap();
    let config = write_config(
        dir.path(),
        Some(&workflows),
        &format!(
            "[auth.oidc]\nissuer = {ISSUER:?}\naudience = {AUDIENCE:?}\n\
             jwks_url = {:?}\nsubject_claim = \"preferred_username\"\n\n\
             [auth.roles.cab-members]\nscopes = [\"approvals:decide\", \"runs:read\"]\napprover_groups = [\"cab\"]\n\n\
             [auth.roles.service-desk]\nscopes = [\"approvals:decide\"]\n",
            idp.url("/realms/acme/protocol/openid-connect/certs")
        ),
    );
    let server = Server::start(&config);
    (dir, server)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims as Keycloak issues them to `user` in `groups`.
fn claims(user: &str, groups: &[&str]) -> Value {
    json!({
        "iss": ISSUER,
        "aud": ["account", AUDIENCE],
        "sub": format!("f3a1-{user}"),
        "preferred_username": user,
        "groups": groups,
        "iat": now(),
        "exp": now() + 300,
    })
}

fn sign_with(claims: &Value, kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    let der = base64::engine::general_purpose::STANDARD
        .decode(PRIVATE_KEY_DER)
        .unwrap();
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(&der)).unwrap()
}

fn sign(claims: &Value) -> String {
    sign_with(claims, KID)
}

fn get_as(server: &Server, secret: &str, path: &str) -> (u16, Value) {
    let response = ureq::get(&server.url(path))
        .set("Authorization", &format!("Bearer {secret}"))
        .call();
    match response {
        Ok(r) => (r.status(), json_of(r)),
        Err(ureq::Error::Status(status, r)) => (status, json_of(r)),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

/// The pending approval of `run`, once it opened.
fn approval_of(server: &Server, run: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get_as(server, common::server::ADMIN_TOKEN, "/v1/approvals");
        assert_eq!(status, 200, "{body:#}");
        if let Some(a) = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["run_id"] == run)
        {
            return a.clone();
        }
        assert!(
            std::time::Instant::now() < deadline && server.run(run)["status"] != "failed",
            "no approval on run {run}: {:#}",
            server.run(run)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_jwt_from_the_identity_provider_authenticates_and_its_group_maps_to_scopes_and_approver_groups()
{
    let idp = identity_provider(Arc::new(AtomicBool::new(true)));
    let (_dir, server) = start(&idp);

    let max = sign(&claims("max", &["cab-members"]));
    let (status, body) = get_as(&server, &max, "/v1/runs");
    assert_eq!(status, 200, "{body:#}");

    // `cab` is in no [groups]: its members come from the identity provider.
    let run = server.start_run("change", json!({}));
    let approval = approval_of(&server, &run);
    assert_eq!(approval["approvers"], json!(["group:cab"]));
    let id = approval["id"].as_str().unwrap();
    // max finds it among his own, though `cab` lists nobody.
    let (status, body) = get_as(&server, &max, "/v1/approvals?approver=me");
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["items"][0]["id"], id, "{body:#}");
    let (_, body) = get_as(
        &server,
        &sign(&claims("sam", &["service-desk"])),
        "/v1/approvals?approver=me",
    );
    assert_eq!(body["items"], json!([]), "{body:#}");

    // Scopes without the approver group: allowed to decide, but not this.
    let desk = sign(&claims("sam", &["service-desk"]));
    let (status, body) = server.send_json_as(
        &desk,
        "POST",
        &format!("/v1/approvals/{id}"),
        &json!({"decision": "approve"}),
    );
    assert_eq!(status, 403, "{body:#}");
    assert_eq!(body["type"], "https://steward.dev/problems/not-an-approver");
    // No scope at all for a group without a role, and none for service-desk
    // to read runs.
    let (status, _) = get_as(&server, &desk, "/v1/runs");
    assert_eq!(status, 403);
    let nobody = sign(&claims("guest", &["everyone"]));
    let (status, body) = get_as(&server, &nobody, "/v1/runs");
    assert_eq!(status, 403, "{body:#}");

    let (status, body) = server.send_json_as(
        &max,
        "POST",
        &format!("/v1/approvals/{id}"),
        &json!({"decision": "approve", "comment": "CAB ok"}),
    );
    assert_eq!(status, 201, "{body:#}");
    assert_eq!(body["decision"]["by"], "max");
    let finished = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(finished[0]["status"], "succeeded", "{:#}", finished[0]);
    assert_eq!(finished[0]["output"]["approved_by"], json!(["max"]));
}

/// Members nobody can count in advance do not shrink a quorum: `quorum: 2`
/// over a group only the identity provider fills needs two people.
#[test]
fn a_quorum_over_an_identity_provider_group_needs_that_many_people() {
    let idp = identity_provider(Arc::new(AtomicBool::new(true)));
    let (_dir, server) = start(&idp);
    let run = server.start_run("change-by-two", json!({}));
    let approval = approval_of(&server, &run);
    assert_eq!(approval["quorum"], 2, "{approval:#}");
    let id = approval["id"].as_str().unwrap();
    let decide = |who: &str| {
        server.send_json_as(
            &sign(&claims(who, &["cab-members"])),
            "POST",
            &format!("/v1/approvals/{id}"),
            &json!({"decision": "approve"}),
        )
    };
    let (status, body) = decide("max");
    assert_eq!(status, 201, "{body:#}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.run(&run)["status"],
        "waiting",
        "one CAB member is not two"
    );
    let (status, body) = decide("max");
    assert_eq!(status, 200, "the same person twice counts once: {body:#}");
    let (status, body) = decide("ann");
    assert_eq!(status, 201, "{body:#}");
    let finished = server.wait_until_finished(std::slice::from_ref(&run), Duration::from_secs(20));
    assert_eq!(finished[0]["status"], "succeeded", "{:#}", finished[0]);
}

#[test]
fn bad_jwts_are_401() {
    let idp = identity_provider(Arc::new(AtomicBool::new(true)));
    let (_dir, server) = start(&idp);
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let good = claims("max", &["cab-members"]);
    let with = |key: &str, value: Value| {
        let mut c = good.clone();
        c[key] = value;
        c
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": KID})),
        b64(&good)
    );
    let confused = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(KID.into());
        jsonwebtoken::encode(
            &header,
            &good,
            &EncodingKey::from_secret(PUBLIC_KEY_PEM.as_bytes()),
        )
        .unwrap()
    };
    let tampered = {
        let token = sign(&claims("max", &["service-desk"]));
        let parts: Vec<&str> = token.split('.').collect();
        format!("{}.{}.{}", parts[0], b64(&good), parts[2])
    };
    let cases = [
        ("alg none", unsigned, "algorithm \"none\""),
        (
            "HS256 keyed with the public key",
            confused,
            "algorithm \"HS256\"",
        ),
        (
            "wrong issuer",
            sign(&with("iss", json!("https://sso.example.com/realms/other"))),
            "issuer",
        ),
        (
            "wrong audience",
            sign(&with("aud", json!("grafana"))),
            "audience",
        ),
        ("expired", sign(&with("exp", json!(now() - 120))), "expired"),
        (
            "not yet valid",
            sign(&with("nbf", json!(now() + 120))),
            "not valid yet",
        ),
        ("unknown kid", sign_with(&good, "forged-key"), "key id"),
        (
            "ES256 named for the RSA key",
            format!(
                "{}.{}.c2ln",
                b64(&json!({"alg": "ES256", "kid": KID})),
                b64(&good)
            ),
            "does not match",
        ),
        ("tampered payload", tampered, "signature"),
    ];
    for (case, token, detail) in cases {
        let (status, body) = get_as(&server, &token, "/v1/runs");
        assert_eq!(status, 401, "{case}: {body:#}");
        assert_eq!(
            body["type"], "https://steward.dev/problems/invalid-jwt",
            "{case}: {body:#}"
        );
        let said = body["detail"].as_str().unwrap();
        assert!(said.contains(detail), "{case}: {said}");
        assert!(
            !said.contains(&token),
            "{case}: the detail repeats the token"
        );
    }

    // Within the configured skew (60s), a just-expired token still passes.
    let (status, body) = get_as(&server, &sign(&with("exp", json!(now() - 20))), "/v1/runs");
    assert_eq!(status, 200, "{body:#}");
    // Steward's own tokens work as before.
    let (status, _) = get_as(&server, common::server::ADMIN_TOKEN, "/v1/runs");
    assert_eq!(status, 200);
}

#[test]
fn an_unknown_kid_refreshes_the_keys_at_most_once_a_minute() {
    let serving = Arc::new(AtomicBool::new(false));
    let idp = identity_provider(serving.clone());
    let (_dir, server) = start(&idp);
    let fetches = || idp.received().len();
    let max = sign(&claims("max", &["cab-members"]));

    // The provider has not published the key yet: one fetch, then 401.
    let (status, body) = get_as(&server, &max, "/v1/runs");
    assert_eq!(status, 401, "{body:#}");
    assert_eq!(fetches(), 1);
    // It publishes it, but within the minute neither the same key id nor
    // forged ones make us ask again.
    serving.store(true, Ordering::SeqCst);
    for kid in [KID, "forged-1", "forged-2", "forged-3"] {
        let (status, _) = get_as(&server, &sign_with(&claims("max", &[]), kid), "/v1/runs");
        assert_eq!(status, 401, "{kid}");
    }
    assert_eq!(fetches(), 1);

    // A minute on, the unknown key id fetches the keys again, and finds it.
    std::thread::sleep(Duration::from_secs(61));
    let (status, body) = get_as(&server, &max, "/v1/runs");
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(fetches(), 2);
    let (status, _) = get_as(&server, &max, "/v1/runs");
    assert_eq!(status, 200);
    assert_eq!(fetches(), 2, "a known key is not fetched again");
}
