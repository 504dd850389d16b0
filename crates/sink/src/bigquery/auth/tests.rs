//! Tokens against a real HTTP token endpoint on 127.0.0.1 (a thread per connection,
//! counting requests), through the same `TokenSource` the sink uses.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::cache::refresh_margin;
use super::*;

/// One request the endpoint received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `application/x-www-form-urlencoded` body.
    fn form(&self) -> HashMap<String, String> {
        self.body
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (url_decode(k), url_decode(v)))
            .collect()
    }
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

enum Reply {
    /// 200 with `{access_token, expires_in, token_type}`.
    Token(String, u64),
    /// An error status with a JSON body.
    Status(u16, &'static str),
    /// Read the request, never answer (until the client hangs up).
    Hang,
    /// Answer after a pause.
    After(Duration, Box<Reply>),
}

/// Token number `n` (the request's index), living `secs`.
fn issue(n: usize, secs: u64) -> Reply {
    Reply::Token(format!("ya29.test-{n}"), secs)
}

type Answer = dyn Fn(usize, &Seen) -> Reply + Send + Sync;

struct TokenServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TokenServer {
    /// Serves `answer(index of the request, request)` on 127.0.0.1.
    fn start(answer: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let answer: Arc<Answer> = Arc::new(answer);
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (log, answer) = (log.clone(), answer.clone());
                std::thread::spawn(move || serve(conn, &log, &*answer));
            }
        });
        TokenServer { addr, seen }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Seen>>, answer: &Answer) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let seen = Seen {
        method,
        target,
        headers,
        body: String::from_utf8(body).unwrap(),
    };
    let n = {
        let mut log = log.lock().unwrap();
        log.push(seen.clone());
        log.len() - 1
    };
    let mut reply = answer(n, &seen);
    loop {
        let (status, body) = match reply {
            Reply::After(pause, then) => {
                std::thread::sleep(pause);
                reply = *then;
                continue;
            }
            Reply::Hang => {
                // Until the client gives up and closes.
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
                return;
            }
            Reply::Token(token, secs) => (
                200,
                json!({"access_token": token, "expires_in": secs, "token_type": "Bearer"})
                    .to_string(),
            ),
            Reply::Status(status, body) => (status, body.to_owned()),
        };
        let mut conn = conn;
        let _ = write!(
            conn,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
}

fn google(key_file: Option<&Path>, timeout: Duration) -> GoogleAuth {
    GoogleAuth {
        key_file: key_file.map(Path::to_owned),
        token_timeout: timeout,
    }
}

/// Application Default Credentials that end at `server` as the metadata server.
fn metadata_env(server: &TokenServer) -> AdcEnv {
    AdcEnv {
        gce_metadata_host: Some(server.host()),
        ..AdcEnv::default()
    }
}

fn metadata_source(server: &TokenServer, timeout: Duration) -> TokenSource {
    TokenSource::google(&google(None, timeout), &metadata_env(server)).unwrap()
}

async fn token(src: &TokenSource) -> String {
    src.token().await.unwrap().unwrap()
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(t.into()).await;
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn metadata_flow_sends_metadata_flavor_and_returns_the_token() {
    let server = TokenServer::start(|n, _| issue(n, 3600));
    let src = metadata_source(&server, 5 * SECOND);
    assert_eq!(token(&src).await, "ya29.test-0");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        seen[0].target,
        "/computeMetadata/v1/instance/service-accounts/default/token"
    );
    assert_eq!(seen[0].header("Metadata-Flavor"), Some("Google"));
}

#[tokio::test]
async fn a_fresh_token_is_reused_and_one_near_expiry_is_replaced_before_it_expires() {
    // 4 s tokens: refreshed 2 s before expiry (the margin is capped at half the life).
    let server = TokenServer::start(|n, _| issue(n, 4));
    let src = metadata_source(&server, 5 * SECOND);
    let start = Instant::now();
    assert_eq!(token(&src).await, "ya29.test-0");
    assert_eq!(token(&src).await, "ya29.test-0");
    assert_eq!(server.requests(), 1, "a fresh token is not fetched again");
    sleep_until(start + 2500 * Duration::from_millis(1)).await;
    assert_eq!(token(&src).await, "ya29.test-1", "replaced in its margin");
    assert!(
        start.elapsed() < 4 * SECOND,
        "the replacement came before the old token expired"
    );
    assert_eq!(token(&src).await, "ya29.test-1");
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn a_token_endpoint_that_never_answers_fails_within_the_timeout() {
    let server = TokenServer::start(|_, _| Reply::Hang);
    let src = metadata_source(&server, SECOND);
    let start = Instant::now();
    let err = src.token().await.unwrap_err();
    let took = start.elapsed();
    assert!(
        (SECOND..3 * SECOND).contains(&took),
        "gave up after {took:?}"
    );
    assert!(
        matches!(&err, SinkError::Transient(m) if m.contains("no answer within")),
        "{err}"
    );
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_valid_token_until_it_expires() {
    // 6 s tokens (refresh point at 3 s). The refresh hangs past the 1 s timeout, later
    // ones are refused.
    let server = TokenServer::start(|n, _| match n {
        0 => issue(n, 6),
        1 => Reply::Hang,
        _ => Reply::Status(503, r#"{"error":"unavailable","error_description":"down"}"#),
    });
    let src = metadata_source(&server, SECOND);
    let start = Instant::now();
    assert_eq!(token(&src).await, "ya29.test-0");
    sleep_until(start + Duration::from_millis(3500)).await;
    assert_eq!(
        token(&src).await,
        "ya29.test-0",
        "a hung refresh: the valid token"
    );
    assert!(start.elapsed() < 6 * SECOND);
    assert_eq!(server.requests(), 2);
    assert_eq!(token(&src).await, "ya29.test-0");
    assert_eq!(
        server.requests(),
        2,
        "the next attempt waits instead of hanging every call"
    );
    sleep_until(start + Duration::from_millis(6500)).await;
    let err = src.token().await.unwrap_err();
    assert_eq!(server.requests(), 3);
    let SinkError::Transient(msg) = &err else {
        panic!("expected a transient error, got {err:?}")
    };
    assert!(
        msg.contains("503") && msg.contains("unavailable: down"),
        "{msg}"
    );
    assert!(!msg.contains("ya29"), "{msg}");
}

#[tokio::test]
async fn concurrent_callers_share_one_refresh_and_its_failure() {
    let server = TokenServer::start(|n, _| {
        Reply::After(Duration::from_millis(300), Box::new(issue(n, 3600)))
    });
    let src = metadata_source(&server, 5 * SECOND);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let src = src.clone();
        tasks.spawn(async move { token(&src).await });
    }
    while let Some(t) = tasks.join_next().await {
        assert_eq!(t.unwrap(), "ya29.test-0");
    }
    assert_eq!(server.requests(), 1);

    let failing = TokenServer::start(|_, _| {
        Reply::After(
            Duration::from_millis(300),
            Box::new(Reply::Status(500, "{}")),
        )
    });
    let src = metadata_source(&failing, 5 * SECOND);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let src = src.clone();
        tasks.spawn(async move { src.token().await });
    }
    while let Some(t) = tasks.join_next().await {
        assert!(matches!(t.unwrap(), Err(SinkError::Transient(_))));
    }
    assert_eq!(
        failing.requests(),
        1,
        "waiters take the failure, not a retry"
    );
}

/// A throwaway RSA key made by the `openssl` CLI (PKCS#8 PEM, as Google issues).
fn rsa_key(dir: &Path, pkcs1: bool) -> (String, PathBuf) {
    let key = dir.join("key.pem");
    let key_arg = key.to_str().unwrap();
    let gen: &[&str] = if pkcs1 {
        &["genrsa", "-traditional", "-out", key_arg, "2048"]
    } else {
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key_arg,
        ]
    };
    openssl(gen);
    let public = dir.join("public.pem");
    openssl(&[
        "pkey",
        "-in",
        key_arg,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (std::fs::read_to_string(&key).unwrap(), public)
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn service_account_file(dir: &Path, pem: &str, token_uri: &str) -> PathBuf {
    let path = dir.join("sa.json");
    let key = json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "kid-1",
        "private_key": pem,
        "client_email": "relay@p.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    });
    std::fs::write(&path, key.to_string()).unwrap();
    path
}

fn b64url_json(part: &str) -> Value {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn service_account_key_from_google_application_credentials_signs_a_jwt_for_its_token_uri() {
    let dir = tempfile::tempdir().unwrap();
    let (pem, public) = rsa_key(dir.path(), false);
    let server = TokenServer::start(|n, _| issue(n, 3600));
    let token_uri = server.url("/token");
    let key_file = service_account_file(dir.path(), &pem, &token_uri);
    // The metadata server is there too: the file must win.
    let metadata = TokenServer::start(|n, _| issue(n, 3600));
    let env = AdcEnv {
        google_application_credentials: Some(key_file.clone().into_os_string()),
        ..metadata_env(&metadata)
    };
    let src = TokenSource::google(&google(None, 5 * SECOND), &env).unwrap();
    assert_eq!(token(&src).await, "ya29.test-0");
    assert_eq!(metadata.requests(), 0);

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("POST", "/token")
    );
    assert_eq!(
        seen[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = seen[0].form();
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let parts: Vec<&str> = form["assertion"].split('.').collect();
    assert_eq!(parts.len(), 3);
    let header = b64url_json(parts[0]);
    assert_eq!(
        header,
        json!({"alg": "RS256", "typ": "JWT", "kid": "kid-1"})
    );
    let claims = b64url_json(parts[1]);
    assert_eq!(claims["iss"], "relay@p.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], token_uri.as_str());
    assert_eq!(claims["scope"], SCOPE);
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 3600);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(iat.abs_diff(now) < 60);

    // The signature verifies with the key's public half, checked by openssl, not by us.
    let signed = dir.path().join("signed");
    let signature = dir.path().join("signature");
    std::fs::write(&signed, format!("{}.{}", parts[0], parts[1])).unwrap();
    std::fs::write(
        &signature,
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap(),
    )
    .unwrap();
    openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        public.to_str().unwrap(),
        "-signature",
        signature.to_str().unwrap(),
        signed.to_str().unwrap(),
    ]);

    // No Debug output carries the key.
    let body: String = pem.lines().nth(5).unwrap().to_owned();
    let debug = format!("{src:?}");
    assert!(
        !debug.contains(&body) && !debug.contains("PRIVATE KEY"),
        "{debug}"
    );
    assert!(!debug.contains("ya29"), "{debug}");
}

#[tokio::test]
async fn a_pkcs1_key_is_accepted_too() {
    let dir = tempfile::tempdir().unwrap();
    let (pem, _) = rsa_key(dir.path(), true);
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let server = TokenServer::start(|n, _| issue(n, 3600));
    let key_file = service_account_file(dir.path(), &pem, &server.url("/token"));
    let src =
        TokenSource::google(&google(Some(&key_file), 5 * SECOND), &AdcEnv::default()).unwrap();
    assert_eq!(token(&src).await, "ya29.test-0");
}

#[tokio::test]
async fn an_explicit_authorized_user_file_exchanges_its_refresh_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = TokenServer::start(|n, _| issue(n, 3600));
    let file = dir.path().join("adc.json");
    std::fs::write(
        &file,
        json!({
            "type": "authorized_user",
            "client_id": "cid.apps.googleusercontent.com",
            "client_secret": "shh-client-secret",
            "refresh_token": "1//refresh-secret",
            "token_uri": server.url("/oauth2/token"),
        })
        .to_string(),
    )
    .unwrap();
    // GOOGLE_APPLICATION_CREDENTIALS names a file that does not exist: the flag wins,
    // so it is never read.
    let env = AdcEnv {
        google_application_credentials: Some(dir.path().join("absent.json").into_os_string()),
        ..AdcEnv::default()
    };
    let src = TokenSource::google(&google(Some(&file), 5 * SECOND), &env).unwrap();
    assert_eq!(token(&src).await, "ya29.test-0");
    let seen = server.seen();
    assert_eq!(seen[0].target, "/oauth2/token");
    let form = seen[0].form();
    assert_eq!(form["grant_type"], "refresh_token");
    assert_eq!(form["client_id"], "cid.apps.googleusercontent.com");
    assert_eq!(form["client_secret"], "shh-client-secret");
    assert_eq!(form["refresh_token"], "1//refresh-secret");
    let debug = format!("{src:?}");
    assert!(
        !debug.contains("secret") && !debug.contains("ya29"),
        "{debug}"
    );
}

#[test]
fn adc_order_is_flag_then_environment_then_gcloud_then_metadata() {
    let flag = Path::new("/flag.json");
    let env = AdcEnv {
        google_application_credentials: Some(OsString::from("/env.json")),
        gce_metadata_host: Some("10.0.0.1:8080".to_owned()),
        gcloud_adc_file: Some(PathBuf::from("/home/u/.config/gcloud/adc.json")),
    };
    let file = |p: &str, origin| GoogleSource::File {
        path: PathBuf::from(p),
        origin,
    };
    assert_eq!(
        select(Some(flag), &env),
        file("/flag.json", FileOrigin::Flag)
    );
    assert_eq!(
        select(None, &env),
        file("/env.json", FileOrigin::Environment)
    );
    let env = AdcEnv {
        google_application_credentials: Some(OsString::new()),
        ..env
    };
    assert_eq!(
        select(None, &env),
        file("/home/u/.config/gcloud/adc.json", FileOrigin::Gcloud),
        "an empty variable counts as unset"
    );
    let env = AdcEnv {
        gcloud_adc_file: None,
        ..env
    };
    assert_eq!(
        select(None, &env),
        GoogleSource::Metadata {
            host: "10.0.0.1:8080".to_owned()
        }
    );
    assert_eq!(
        select(None, &AdcEnv::default()),
        GoogleSource::Metadata {
            host: "metadata.google.internal".to_owned()
        }
    );
}

#[test]
fn a_bad_credentials_file_is_fatal_at_start_and_quotes_no_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let fatal = |contents: Option<&str>| {
        let path = dir.path().join("bad.json");
        let _ = std::fs::remove_file(&path);
        if let Some(c) = contents {
            std::fs::write(&path, c).unwrap();
        }
        let env = AdcEnv {
            google_application_credentials: Some(path.into_os_string()),
            ..AdcEnv::default()
        };
        match TokenSource::google(&google(None, SECOND), &env) {
            Err(SinkError::Fatal(m)) => m,
            other => panic!("expected Fatal, got {other:?}"),
        }
    };
    let m = fatal(None);
    assert!(m.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{m}");
    let m = fatal(Some("{\"private_key\": \"SECRETSTUFF"));
    assert!(m.contains("not JSON") && !m.contains("SECRETSTUFF"), "{m}");
    let sa = |key: &str| {
        json!({"type": "service_account", "private_key": key,
               "client_email": "a@b", "token_uri": "http://127.0.0.1:1/token"})
        .to_string()
    };
    let m = fatal(Some(&sa(
        "-----BEGIN PRIVATE KEY-----\nSECRETSTUFF\n-----END PRIVATE KEY-----\n",
    )));
    assert!(
        m.contains("private_key") && !m.contains("SECRETSTUFF"),
        "{m}"
    );
    let m = fatal(Some(&sa(
        "-----BEGIN PRIVATE KEY-----\nU0VDUkVUU1RVRkY=\n-----END PRIVATE KEY-----\n",
    )));
    assert!(
        m.contains("not a usable RSA key") && !m.contains("U0VDUkVU"),
        "{m}"
    );
    let m = fatal(Some(
        &json!({"type": 7, "private_key": "SECRETSTUFF"}).to_string(),
    ));
    assert!(m.contains("no `type`") && !m.contains("SECRETSTUFF"), "{m}");
    let m = fatal(Some(r#"{"type": "external_account"}"#));
    assert!(m.contains("`external_account` is not supported"), "{m}");
    let m = fatal(Some(r#"{"type": "authorized_user", "client_id": "c"}"#));
    assert!(m.contains("client_secret"), "{m}");
}

#[test]
fn secrets_print_redacted() {
    let s = Secret::new("ya29.very-secret");
    assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    let src = TokenSource::Static(s);
    assert!(!format!("{src:?}").contains("ya29"));
}

#[test]
fn margin_is_a_tenth_of_the_lifetime_at_least_a_minute_at_most_half() {
    let s = Duration::from_secs;
    assert_eq!(refresh_margin(s(3600)), s(360));
    assert_eq!(refresh_margin(s(3599)), Duration::from_millis(359_900));
    assert_eq!(refresh_margin(s(300)), s(60));
    assert_eq!(refresh_margin(s(100)), s(50));
    assert_eq!(refresh_margin(s(4)), s(2));
}
