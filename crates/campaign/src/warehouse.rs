//! The verifier's own way into the warehouse: BigQuery's REST `jobs.query`, over a
//! plain HTTP/1.1 connection. Deliberately not the processor's sink or `reconcile`
//! code, so a bug there cannot hide itself here.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

pub struct Warehouse {
    /// `http://HOST:PORT` of the REST API.
    pub rest_url: String,
    pub project: String,
    pub dataset: String,
}

impl Warehouse {
    /// Creates the dataset (for the verifier's own tests; the processor creates it in
    /// a campaign).
    pub fn create_dataset(&self) -> anyhow::Result<()> {
        let url = format!(
            "{}/bigquery/v2/projects/{}/datasets",
            self.rest_url, self.project
        );
        let body = serde_json::json!({
            "datasetReference": {"projectId": self.project, "datasetId": self.dataset}
        });
        post_json(&url, &body.to_string()).map(|_| ())
    }

    /// Runs `sql` (with `${dataset}` replaced) and returns the rows' cells.
    pub fn query(&self, sql: &str) -> anyhow::Result<Vec<Vec<Value>>> {
        let sql = sql.replace("${dataset}", &self.dataset);
        let body = serde_json::json!({
            "query": sql,
            "useLegacySql": false,
            "maxResults": 1_000_000,
            "timeoutMs": 600_000,
        });
        let url = format!(
            "{}/bigquery/v2/projects/{}/queries",
            self.rest_url, self.project
        );
        let text = post_json(&url, &body.to_string())
            .with_context(|| format!("querying the warehouse: {sql}"))?;
        let v: Value = serde_json::from_str(&text).with_context(|| {
            format!("the warehouse answered something that is not JSON: {text}")
        })?;
        if let Some(e) = v.get("error") {
            bail!("the query `{sql}` failed: {e}");
        }
        if v["jobComplete"] == Value::Bool(false) {
            bail!("the query `{sql}` did not complete");
        }
        Ok(v["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        r["f"]
                            .as_array()
                            .map(|cells| cells.iter().map(|c| c["v"].clone()).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// A cell as an integer (BigQuery sends INT64 as a string).
pub fn int(v: &Value) -> anyhow::Result<i128> {
    match v {
        Value::String(s) => s
            .parse()
            .with_context(|| format!("`{s}` is not an integer")),
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .with_context(|| format!("{n} is not an integer")),
        Value::Null => Ok(0),
        other => bail!("{other} is not an integer"),
    }
}

/// A cell as text.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn post_json(url: &str, body: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (host, path) = rest.split_once('/').context("a URL without a path")?;
    let mut s = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    s.set_read_timeout(Some(Duration::from_secs(900)))?;
    write!(
        s,
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("an HTTP answer without a body")?;
    let head = String::from_utf8_lossy(&resp[..split]).to_ascii_lowercase();
    let body = &resp[split + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Joins an HTTP/1.1 chunked body (sizes count bytes).
fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&s[..eol]);
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let rest = &s[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }

    #[test]
    fn integers_come_as_strings_or_numbers() {
        assert_eq!(int(&Value::String("12".into())).unwrap(), 12);
        assert_eq!(int(&serde_json::json!(7)).unwrap(), 7);
        assert!(int(&Value::String("x".into())).is_err());
    }
}
