//! The BigQuery REST API: datasets, DDL and queries.
//!
//! NOTE (emulator): a failed query answers HTTP 200 with an `errors` array, so every
//! answer is checked for `errors` and `error`, not only for the status. TIMESTAMP
//! values are requested as int64 microseconds (`useInt64Timestamp`), which is what the
//! emulator always returns; every cell comes back as a string.

use std::time::Duration;

use serde_json::{json, Value};

use crate::bigquery::auth::TokenSource;
use crate::SinkError;

#[derive(Clone)]
pub struct Rest {
    http: reqwest::Client,
    /// e.g. `http://127.0.0.1:9050/bigquery/v2` or `https://bigquery.googleapis.com/bigquery/v2`.
    base: String,
    project: String,
    token: TokenSource,
}

/// A query answer: column names and rows of cells (strings or null).
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// Rows a DML statement changed (`numDmlAffectedRows`).
    pub affected_rows: Option<u64>,
}

impl QueryResult {
    /// The cell of `column` in row `i`.
    pub fn get(&self, i: usize, column: &str) -> Option<&Value> {
        let c = self.columns.iter().position(|n| n == column)?;
        self.rows.get(i)?.get(c)
    }

    pub fn get_i64(&self, i: usize, column: &str) -> Option<i64> {
        match self.get(i, column)? {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn get_str(&self, i: usize, column: &str) -> Option<String> {
        match self.get(i, column)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            v => Some(v.to_string()),
        }
    }
}

fn transport(e: reqwest::Error) -> SinkError {
    SinkError::Transient(format!("BigQuery REST: {e}"))
}

impl Rest {
    pub fn new(rest_url: &str, project: &str, token: TokenSource) -> Result<Rest, SinkError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| SinkError::Fatal(format!("building the HTTP client: {e}")))?;
        Ok(Rest {
            http,
            base: format!("{}/bigquery/v2", rest_url.trim_end_matches('/')),
            project: project.to_owned(),
            token,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, SinkError> {
        let req = match self.token.token().await? {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if let Some(errors) = body
            .get("errors")
            .and_then(Value::as_array)
            .filter(|e| !e.is_empty())
        {
            return Err(SinkError::Fatal(format!(
                "BigQuery: {}",
                Value::Array(errors.clone())
            )));
        }
        if let Some(err) = body.get("error").filter(|e| !e.is_null()) {
            let code = err
                .get("code")
                .and_then(Value::as_i64)
                .unwrap_or(status.as_u16() as i64);
            return Err(if code == 409 {
                SinkError::Fatal(format!("already exists: {err}"))
            } else if code >= 500 || code == 429 {
                SinkError::Transient(format!("BigQuery HTTP {code}: {err}"))
            } else {
                SinkError::Fatal(format!("BigQuery HTTP {code}: {err}"))
            });
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(SinkError::Transient(format!("BigQuery HTTP {status}")));
        }
        if !status.is_success() {
            return Err(SinkError::Fatal(format!("BigQuery HTTP {status}: {body}")));
        }
        Ok(body)
    }

    /// Creates the dataset unless it exists.
    pub async fn ensure_dataset(&self, dataset: &str) -> Result<(), SinkError> {
        let url = format!("{}/projects/{}/datasets", self.base, self.project);
        let body = json!({"datasetReference": {"projectId": self.project, "datasetId": dataset}});
        match self.send(self.http.post(url).json(&body)).await {
            Ok(_) => Ok(()),
            Err(SinkError::Fatal(m))
                if m.starts_with("already exists")
                    || m.contains("Already Exists")
                    || m.contains("already exists") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs one statement (query or DDL) and returns every row.
    pub async fn query(&self, sql: &str) -> Result<QueryResult, SinkError> {
        let url = format!("{}/projects/{}/queries", self.base, self.project);
        let body = json!({
            "query": sql,
            "useLegacySql": false,
            "maxResults": 10000,
            "timeoutMs": 60000,
            "formatOptions": {"useInt64Timestamp": true},
        });
        let mut page = self.send(self.http.post(url).json(&body)).await?;
        let job_id = page["jobReference"]["jobId"].as_str().map(str::to_owned);
        // Wait for slow jobs.
        let mut waited = 0;
        while page["jobComplete"] == Value::Bool(false) {
            let Some(job) = &job_id else { break };
            tokio::time::sleep(Duration::from_millis(200)).await;
            waited += 1;
            if waited > 600 {
                return Err(SinkError::Transient(
                    "query did not complete in 2 minutes".into(),
                ));
            }
            let url = format!("{}/projects/{}/queries/{job}", self.base, self.project);
            page = self.send(self.http.get(url)).await?;
        }
        let columns: Vec<String> = page["schema"]["fields"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|x| x["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut result = QueryResult {
            columns,
            rows: Vec::new(),
            affected_rows: page["numDmlAffectedRows"]
                .as_str()
                .and_then(|n| n.parse().ok())
                .or_else(|| page["numDmlAffectedRows"].as_u64()),
        };
        loop {
            if let Some(rows) = page["rows"].as_array() {
                for r in rows {
                    let cells = r["f"]
                        .as_array()
                        .map(|c| c.iter().map(|x| x["v"].clone()).collect())
                        .unwrap_or_default();
                    result.rows.push(cells);
                }
            }
            let (Some(token), Some(job)) = (page["pageToken"].as_str(), &job_id) else {
                break;
            };
            let url = format!("{}/projects/{}/queries/{job}", self.base, self.project);
            page = self
                .send(
                    self.http
                        .get(url)
                        .query(&[("pageToken", token), ("maxResults", "10000")]),
                )
                .await?;
        }
        Ok(result)
    }

    /// Applies a SQL file: `${dataset}` is replaced, `--` comments dropped, and each
    /// `;`-terminated statement run in order. Idempotent when the statements are.
    pub async fn apply_sql(&self, dataset: &str, text: &str) -> Result<usize, SinkError> {
        let mut n = 0;
        for stmt in split_statements(&text.replace("${dataset}", dataset)) {
            self.query(&stmt).await?;
            n += 1;
        }
        Ok(n)
    }
}

/// Splits a SQL file into statements, dropping `--` comments (none of our string
/// literals contain `--` or `;`).
pub fn split_statements(text: &str) -> Vec<String> {
    let without_comments: String = text
        .lines()
        .map(|l| match l.find("--") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_our_sql_files() {
        let tables = split_statements(include_str!("../../../../sql/001_tables.sql"));
        assert_eq!(tables.len(), 5);
        assert!(tables
            .iter()
            .all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS")));
        let views = split_statements(include_str!("../../../../sql/002_reconciliation_views.sql"));
        assert!(views.len() >= 5);
        assert!(views
            .iter()
            .all(|s| s.starts_with("CREATE OR REPLACE VIEW")));
    }
}
