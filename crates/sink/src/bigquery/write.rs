//! The Storage Write API: COMMITTED streams with explicit offsets.
//!
//! `gcp-bigquery-client`'s `StorageApi` only appends to the default stream without
//! offsets and has Google's endpoint hard-coded, so this uses the generated gRPC client
//! it re-exports, against a configurable endpoint (the emulator or Google, with TLS and
//! a bearer token for the latter).

use gcp_bigquery_client::google::cloud::bigquery::storage::v1::append_rows_request::{
    ProtoData, Rows,
};
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::append_rows_response::Response;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::big_query_write_client::BigQueryWriteClient;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::write_stream::Type as StreamType;
use gcp_bigquery_client::google::cloud::bigquery::storage::v1::{
    AppendRowsRequest, CreateWriteStreamRequest, FinalizeWriteStreamRequest, ProtoRows,
    ProtoSchema, WriteStream,
};
use paydedup_state::Table;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Code;

use crate::bigquery::auth::TokenSource;
use crate::bigquery::schema;
use crate::SinkError;

/// The longest any one call may take; beyond it the connection is dropped and the
/// call is a transient error (retried by the relay), never a hang.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How one append ended.
#[derive(Debug)]
pub enum Appended {
    /// The rows are committed at the requested offset.
    Ok,
    /// The offset is already written (a resend): BigQuery wrote nothing.
    AlreadyExists(String),
    /// The offset is beyond the stream's end: a gap.
    OutOfRange(String),
    /// The stream no longer exists (BigQuery dropped it; the emulator restarted).
    StreamGone(String),
    /// The rows were refused as invalid: the first refused row's index in the request,
    /// and the reasons.
    Rejected { index: usize, reason: String },
}

pub struct Writer {
    endpoint: String,
    client: Option<BigQueryWriteClient<Channel>>,
    token: TokenSource,
}

fn classify_status(s: &tonic::Status) -> Result<Appended, SinkError> {
    let msg = format!("{:?}: {}", s.code(), s.message());
    match s.code() {
        Code::NotFound | Code::FailedPrecondition => Ok(Appended::StreamGone(msg)),
        Code::AlreadyExists => Ok(Appended::AlreadyExists(msg)),
        Code::OutOfRange => Ok(Appended::OutOfRange(msg)),
        // A whole request refused (schema drift, size): no row is at fault, so
        // dead-lettering would hide an operator problem. Stop instead.
        Code::InvalidArgument => Err(SinkError::Fatal(msg)),
        Code::PermissionDenied | Code::Unauthenticated => Err(SinkError::Fatal(msg)),
        _ => Err(SinkError::Transient(msg)),
    }
}

impl Writer {
    pub fn new(endpoint: &str, token: TokenSource) -> Writer {
        Writer {
            endpoint: endpoint.to_owned(),
            client: None,
            token,
        }
    }

    async fn client(&mut self) -> Result<BigQueryWriteClient<Channel>, SinkError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let mut ep = Channel::from_shared(self.endpoint.clone()).map_err(|e| {
            SinkError::Fatal(format!("bad Storage Write endpoint {}: {e}", self.endpoint))
        })?;
        if self.endpoint.starts_with("https://") {
            let host = self
                .endpoint
                .trim_start_matches("https://")
                .split([':', '/'])
                .next()
                .unwrap_or_default()
                .to_owned();
            ep = ep
                .tls_config(ClientTlsConfig::new().domain_name(host).with_native_roots())
                .map_err(|e| SinkError::Fatal(format!("TLS config: {e}")))?;
        }
        let channel = ep
            .connect()
            .await
            .map_err(|e| SinkError::Transient(format!("connecting to {}: {e}", self.endpoint)))?;
        let c = BigQueryWriteClient::new(channel).max_decoding_message_size(64 << 20);
        self.client = Some(c.clone());
        Ok(c)
    }

    async fn request<T>(&self, msg: T, routing: &str) -> Result<tonic::Request<T>, SinkError> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = self.token.token().await? {
            let v = MetadataValue::try_from(format!("Bearer {t}"))
                .map_err(|e| SinkError::Fatal(format!("bad token: {e}")))?;
            req.metadata_mut().insert("authorization", v);
        }
        if let Ok(v) = MetadataValue::try_from(routing) {
            req.metadata_mut().insert("x-goog-request-params", v);
        }
        Ok(req)
    }

    /// Creates a COMMITTED stream on `projects/P/datasets/D/tables/T`; returns its name.
    pub async fn create_stream(&mut self, table_path: &str) -> Result<String, SinkError> {
        let mut c = self.client().await?;
        let req = self
            .request(
                CreateWriteStreamRequest {
                    parent: table_path.to_owned(),
                    write_stream: Some(WriteStream {
                        r#type: StreamType::Committed as i32,
                        ..Default::default()
                    }),
                },
                &format!("parent={table_path}"),
            )
            .await?;
        let answer = tokio::time::timeout(CALL_TIMEOUT, c.create_write_stream(req))
            .await
            .map_err(|_| {
                SinkError::Transient(format!(
                    "creating a write stream got no answer in {CALL_TIMEOUT:?}"
                ))
            })?;
        match answer {
            Ok(r) => Ok(r.into_inner().name),
            Err(s) if s.code() == Code::NotFound => Err(SinkError::Fatal(format!(
                "table {table_path} does not exist (run the DDL in sql/): {}",
                s.message()
            ))),
            Err(s) => {
                self.client = None;
                Err(match classify_status(&s) {
                    Err(e) => e,
                    Ok(_) => SinkError::Fatal(format!("creating a write stream: {s}")),
                })
            }
        }
    }

    /// Finalizes `stream`: later appends to it fail. A stream already finalized or gone
    /// is fine (that is the goal).
    pub async fn finalize_stream(&mut self, stream: &str) -> Result<(), SinkError> {
        let mut c = self.client().await?;
        let req = self
            .request(
                FinalizeWriteStreamRequest {
                    name: stream.to_owned(),
                },
                &format!("name={stream}"),
            )
            .await?;
        let answer = tokio::time::timeout(CALL_TIMEOUT, c.finalize_write_stream(req))
            .await
            .map_err(|_| {
                SinkError::Transient(format!(
                    "finalizing a write stream got no answer in {CALL_TIMEOUT:?}"
                ))
            })?;
        match answer {
            Ok(_) => Ok(()),
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(s) => {
                self.client = None;
                Err(match classify_status(&s) {
                    Err(e) => e,
                    Ok(_) => SinkError::Fatal(format!("finalizing a write stream: {s}")),
                })
            }
        }
    }

    /// Appends encoded rows at `offset` of `stream`.
    pub async fn append(
        &mut self,
        table: Table,
        stream: &str,
        offset: i64,
        rows: Vec<Vec<u8>>,
    ) -> Result<Appended, SinkError> {
        let mut c = self.client().await?;
        let msg = AppendRowsRequest {
            write_stream: stream.to_owned(),
            offset: Some(offset),
            rows: Some(Rows::ProtoRows(ProtoData {
                writer_schema: Some(ProtoSchema {
                    proto_descriptor: Some(schema::descriptor(table)),
                }),
                rows: Some(ProtoRows {
                    serialized_rows: rows,
                }),
            })),
            ..Default::default()
        };
        let req = self
            .request(
                tokio_stream::iter(vec![msg]),
                &format!("write_stream={stream}"),
            )
            .await?;
        let call = tokio::time::timeout(CALL_TIMEOUT, async {
            let mut responses = c.append_rows(req).await?.into_inner();
            responses.message().await
        })
        .await;
        let first = match call {
            Err(_) => {
                self.client = None;
                return Err(SinkError::Transient(format!(
                    "append to {stream} got no answer in {CALL_TIMEOUT:?}"
                )));
            }
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => {
                return Err(SinkError::Transient(
                    "append stream closed without an answer".into(),
                ))
            }
            Ok(Err(s)) => {
                if !matches!(
                    s.code(),
                    Code::NotFound | Code::AlreadyExists | Code::OutOfRange | Code::InvalidArgument
                ) {
                    self.client = None;
                }
                return classify_status(&s);
            }
        };
        if let Some(bad) = first.row_errors.iter().min_by_key(|e| e.index) {
            return Ok(Appended::Rejected {
                index: usize::try_from(bad.index).unwrap_or(0),
                reason: format!(
                    "{} ({} rows of the request refused)",
                    bad.message,
                    first.row_errors.len()
                ),
            });
        }
        match first.response {
            Some(Response::AppendResult(_)) => Ok(Appended::Ok),
            Some(Response::Error(status)) => {
                let msg = format!("code {}: {}", status.code, status.message);
                match status.code {
                    6 => Ok(Appended::AlreadyExists(msg)),
                    11 => Ok(Appended::OutOfRange(msg)),
                    5 | 9 => Ok(Appended::StreamGone(msg)),
                    3 => Err(SinkError::Fatal(msg)),
                    7 | 16 => Err(SinkError::Fatal(msg)),
                    _ => Err(SinkError::Transient(msg)),
                }
            }
            None => Err(SinkError::Transient(
                "append answered without a result".into(),
            )),
        }
    }
}
