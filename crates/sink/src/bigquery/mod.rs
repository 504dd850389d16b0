//! [`BigQuerySink`]: exactly-once delivery to BigQuery through the Storage Write API.
//!
//! One COMMITTED write stream per (table, partition). The stream's offset of a row is
//! `outbox_seq − base`, where `base` is the sequence the stream started at; stream name
//! and base live in the state store (`meta/sink/<table>/<partition>`), so a restart
//! resumes the same stream. BigQuery answers ALREADY_EXISTS for an offset already
//! written: those rows are there, and the sink reports them as already present.
//!
//! A stored stream that no longer exists (BigQuery drops idle streams; the emulator
//! loses all of them on restart) is replaced: the sink reads the highest delivered
//! sequence of that (table, partition) from the table itself, opens a new stream with
//! `base` = the next sequence, and continues. The same recovery handles a stream that
//! claims an offset the table does not hold (the emulator uses up an offset when its
//! insert fails): the table, not the stream, is the truth.
//!
//! Only one processor delivers a partition: it claims the partition's owner epoch at
//! open and registers every stream it opens; a newer owner finalizes the older owner's
//! streams ([`fence`]).
//!
//! - [`fence`]: owner epochs and stream registration.
//! - [`schema`]: columns, writer descriptors, JSON → protobuf rows.
//! - [`write`]: the Storage Write gRPC calls.
//! - [`rest`]: datasets, DDL, queries.
//! - [`auth`]: which credentials to send.

pub mod auth;
pub mod fence;
pub mod rest;
pub mod schema;
pub mod write;

use std::collections::HashMap;
use std::sync::Arc;

use paydedup_state::{StateStore, Table};
use serde::{Deserialize, Serialize};

use crate::{identity, plan_append, AppendOutcome, RowIdentity, Sink, SinkError, StoredRow};
pub use auth::Credentials;
use auth::TokenSource;
use fence::Fence;
pub use rest::QueryResult;
use rest::Rest;
use write::{Appended, Writer};

/// The DDL applied on open (idempotent).
pub const SQL_FILES: [(&str, &str); 2] = [
    (
        "001_tables.sql",
        include_str!("../../../../sql/001_tables.sql"),
    ),
    (
        "002_reconciliation_views.sql",
        include_str!("../../../../sql/002_reconciliation_views.sql"),
    ),
];

#[derive(Debug, Clone)]
pub struct BigQueryConfig {
    pub project: String,
    pub dataset: String,
    /// REST root, e.g. `https://bigquery.googleapis.com` or `http://127.0.0.1:9050`.
    pub rest_url: String,
    /// Storage Write gRPC endpoint, e.g. `https://bigquerystorage.googleapis.com`.
    pub grpc_url: String,
    pub credentials: Credentials,
}

impl BigQueryConfig {
    /// Parses `PROJECT.DATASET`.
    pub fn parse_target(target: &str) -> Result<(String, String), SinkError> {
        match target.split_once('.') {
            Some((p, d)) if !p.is_empty() && !d.is_empty() && !d.contains('.') => {
                Ok((p.to_owned(), d.to_owned()))
            }
            _ => Err(SinkError::Fatal(format!(
                "expected PROJECT.DATASET, got `{target}`"
            ))),
        }
    }
}

/// Synchronous access to a dataset: DDL and queries (for the sink and `reconcile`).
pub struct Warehouse {
    rt: tokio::runtime::Runtime,
    rest: Rest,
    token: TokenSource,
    pub cfg: BigQueryConfig,
}

impl Warehouse {
    pub fn connect(cfg: &BigQueryConfig) -> Result<Warehouse, SinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SinkError::Fatal(format!("starting the I/O runtime: {e}")))?;
        let token = rt.block_on(TokenSource::new(&cfg.credentials))?;
        let rest = Rest::new(&cfg.rest_url, &cfg.project, token.clone())?;
        Ok(Warehouse {
            rt,
            rest,
            token,
            cfg: cfg.clone(),
        })
    }

    /// Creates the dataset, the tables and the views (idempotent).
    pub fn apply_ddl(&self) -> Result<usize, SinkError> {
        self.rt.block_on(async {
            self.rest.ensure_dataset(&self.cfg.dataset).await?;
            let mut n = 0;
            for (_, text) in SQL_FILES {
                n += self.rest.apply_sql(&self.cfg.dataset, text).await?;
            }
            Ok(n)
        })
    }

    pub fn query(&self, sql: &str) -> Result<QueryResult, SinkError> {
        let sql = sql.replace("${dataset}", &self.cfg.dataset);
        self.rt.block_on(self.rest.query(&sql))
    }
}

/// Stream bookkeeping kept in the state store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredStream {
    /// Empty: no usable stream, open a new one.
    stream: String,
    base: u64,
    /// Sequences below this were dead-lettered; never expect them in the table.
    floor: u64,
}

struct StreamState {
    stored: StoredStream,
    /// The next sequence the table expects, once known.
    next: Option<u64>,
}

pub struct BigQuerySink {
    wh: Warehouse,
    writer: Writer,
    store: Arc<StateStore>,
    streams: HashMap<(Table, i32), StreamState>,
    fence: Fence,
}

const MAX_ATTEMPTS: usize = 5;
/// Encoded bytes per AppendRows request (BigQuery caps a request at 10 MiB).
const MAX_REQUEST_BYTES: usize = 8 << 20;

impl BigQuerySink {
    /// Connects, creates dataset, tables and views if missing, and claims `owned`
    /// (the previous owners' streams are finalized; see [`fence`]). Streams this state
    /// stored under an earlier claim are finalized too: new ones open on first use.
    pub fn open(
        cfg: &BigQueryConfig,
        store: Arc<StateStore>,
        owned: &[i32],
    ) -> Result<BigQuerySink, SinkError> {
        let wh = Warehouse::connect(cfg)?;
        wh.apply_ddl()?;
        fence::ddl(&wh)?;
        let mut writer = Writer::new(&cfg.grpc_url, wh.token.clone());
        let fence = Fence::claim(&wh, &mut writer, owned)?;
        let mut sink = BigQuerySink {
            wh,
            writer,
            store,
            streams: HashMap::new(),
            fence,
        };
        sink.open_streams(owned)?;
        Ok(sink)
    }

    /// A new stream for every (table, owned partition), registered under this claim in
    /// one statement: streams stored under an earlier claim were finalized by it.
    fn open_streams(&mut self, owned: &[i32]) -> Result<(), SinkError> {
        if owned.is_empty() {
            return Ok(());
        }
        let mut opened = Vec::new();
        for t in Table::ALL {
            let path = self.table_path(t);
            for &p in owned {
                let name = self.wh.rt.block_on(self.writer.create_stream(&path))?;
                opened.push((t, p, name));
            }
        }
        self.fence.register(&self.wh, &mut self.writer, &opened)?;
        // Each stream starts at its table's position for the partition.
        let list = owned
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let mut next: HashMap<(Table, i32), u64> = HashMap::new();
        for t in Table::ALL {
            let r = self.wh.query(&format!(
                "SELECT source_partition, MAX(outbox_seq) AS max_seq FROM `${{dataset}}.{}` \
                 WHERE source_partition IN ({list}) GROUP BY source_partition",
                t.name()
            ))?;
            for i in 0..r.rows.len() {
                if let (Some(p), Some(m)) =
                    (r.get_i64(i, "source_partition"), r.get_i64(i, "max_seq"))
                {
                    next.insert((t, i32::try_from(p).unwrap_or(-1)), m as u64 + 1);
                }
            }
        }
        for (t, p, name) in opened {
            let floor = self.stored(t, p)?.floor;
            let base = next.get(&(t, p)).copied().unwrap_or(0).max(floor);
            let stored = StoredStream {
                stream: name,
                base,
                floor,
            };
            self.persist(t, p, &stored)?;
            self.streams.insert(
                (t, p),
                StreamState {
                    stored,
                    next: Some(base),
                },
            );
        }
        tracing::info!(partitions = ?owned, "Opened BigQuery write streams.");
        Ok(())
    }

    fn table_path(&self, table: Table) -> String {
        format!(
            "projects/{}/datasets/{}/tables/{}",
            self.wh.cfg.project,
            self.wh.cfg.dataset,
            table.name()
        )
    }

    /// The next sequence the table expects: highest delivered + 1 (or the floor).
    fn table_next(&self, table: Table, partition: i32, floor: u64) -> Result<u64, SinkError> {
        let r = self.wh.query(&format!(
            "SELECT MAX(outbox_seq) AS max_seq FROM `${{dataset}}.{}` WHERE source_partition = {partition}",
            table.name()
        ))?;
        let next = r.get_i64(0, "max_seq").map_or(0, |m| m as u64 + 1);
        Ok(next.max(floor))
    }

    fn persist(&self, table: Table, partition: i32, s: &StoredStream) -> Result<(), SinkError> {
        let bytes = serde_json::to_vec(s).map_err(|e| SinkError::Fatal(e.to_string()))?;
        self.store
            .put_sink_meta(table, partition, &bytes)
            .map_err(|e| SinkError::Fatal(format!("saving stream state: {e}")))
    }

    /// Opens a new COMMITTED stream whose offset 0 is the table's next sequence.
    fn replace_stream(&mut self, table: Table, partition: i32, why: &str) -> Result<(), SinkError> {
        let floor = self
            .streams
            .get(&(table, partition))
            .map_or(0, |s| s.stored.floor);
        let next = self.table_next(table, partition, floor)?;
        let path = self.table_path(table);
        let name = self.wh.rt.block_on(self.writer.create_stream(&path))?;
        self.fence.register(
            &self.wh,
            &mut self.writer,
            &[(table, partition, name.clone())],
        )?;
        tracing::info!(table = %table, partition, base = next, reason = why, "Opened a new BigQuery write stream.");
        let stored = StoredStream {
            stream: name,
            base: next,
            floor,
        };
        self.persist(table, partition, &stored)?;
        self.streams.insert(
            (table, partition),
            StreamState {
                stored,
                next: Some(next),
            },
        );
        Ok(())
    }

    /// The stream bookkeeping saved in the state store (default when none).
    fn stored(&self, table: Table, partition: i32) -> Result<StoredStream, SinkError> {
        Ok(
            match self
                .store
                .get_sink_meta(table, partition)
                .map_err(|e| SinkError::Fatal(format!("reading stream state: {e}")))?
            {
                Some(b) => serde_json::from_slice(&b).unwrap_or_default(),
                None => StoredStream::default(),
            },
        )
    }

    fn state(&mut self, table: Table, partition: i32) -> Result<(), SinkError> {
        if self.streams.contains_key(&(table, partition)) {
            return Ok(());
        }
        let stored = self.stored(table, partition)?;
        let empty = stored.stream.is_empty();
        self.streams
            .insert((table, partition), StreamState { stored, next: None });
        if empty {
            self.replace_stream(table, partition, "no stream yet")?;
        }
        Ok(())
    }
}

impl Sink for BigQuerySink {
    fn append(
        &mut self,
        table: Table,
        partition: i32,
        first_seq: u64,
        rows: &[Vec<u8>],
    ) -> Result<AppendOutcome, SinkError> {
        // Rows written by this call (in chunks); failures count only non-Ok answers.
        let mut written = 0usize;
        let mut failures = 0;
        while failures < MAX_ATTEMPTS {
            self.state(table, partition)?;
            let key = (table, partition);
            let (next, stored) = {
                let st = &self.streams[&key];
                (st.next, st.stored.clone())
            };
            let next = match next {
                Some(n) => n,
                None => {
                    let n = self.table_next(table, partition, stored.floor)?;
                    if let Some(s) = self.streams.get_mut(&key) {
                        s.next = Some(n);
                    }
                    n
                }
            };
            let skip = plan_append(table, partition, next, first_seq, rows.len())?;
            if skip == rows.len() {
                return Ok(AppendOutcome {
                    written,
                    already_present: rows.len() - written,
                });
            }
            let start = first_seq + skip as u64;
            if start < stored.base {
                self.replace_stream(table, partition, "rows precede the stream's base")?;
                failures += 1;
                continue;
            }
            let fresh = &rows[skip..];
            // One request stays under BigQuery's 10 MiB AppendRows limit.
            let mut encoded = Vec::new();
            let mut bytes = 0;
            for (i, r) in fresh.iter().enumerate() {
                let e = schema::encode_row(table, r).map_err(|reason| SinkError::Rejected {
                    index: skip + i,
                    reason,
                })?;
                if !encoded.is_empty() && bytes + e.len() > MAX_REQUEST_BYTES {
                    break;
                }
                bytes += e.len();
                encoded.push(e);
            }
            let n = encoded.len() as u64;
            let offset = (start - stored.base) as i64;
            let answer =
                self.wh
                    .rt
                    .block_on(self.writer.append(table, &stored.stream, offset, encoded))?;
            match answer {
                Appended::Ok => {
                    if let Some(s) = self.streams.get_mut(&key) {
                        s.next = Some(start + n);
                    }
                    written += n as usize;
                    continue;
                }
                Appended::AlreadyExists(msg) => {
                    // Are the rows in the table? The table is the truth.
                    let in_table = self.table_next(table, partition, stored.floor)?;
                    if in_table > start {
                        if let Some(s) = self.streams.get_mut(&key) {
                            s.next = Some(in_table);
                        }
                    } else {
                        tracing::warn!(table = %table, partition, offset, answer = %msg, "Stream claims rows the table lacks; replacing it.");
                        self.replace_stream(table, partition, "stream ahead of table")?;
                    }
                }
                Appended::OutOfRange(msg) => {
                    let in_table = self.table_next(table, partition, stored.floor)?;
                    if in_table < start {
                        return Err(SinkError::Gap {
                            table,
                            partition,
                            expected: in_table,
                            got: start,
                        });
                    }
                    tracing::warn!(table = %table, partition, offset, answer = %msg, "Stream behind the table; replacing it.");
                    self.replace_stream(table, partition, "stream behind table")?;
                }
                Appended::StreamGone(msg) => {
                    tracing::warn!(table = %table, partition, answer = %msg, "Write stream is gone; replacing it.");
                    self.replace_stream(table, partition, "stream gone")?;
                }
                Appended::Rejected { index, reason } => {
                    // The request started at `fresh[0]`, which is `rows[skip]`.
                    return Err(SinkError::Rejected {
                        index: skip + index,
                        reason,
                    });
                }
            }
            failures += 1;
        }
        Err(SinkError::Transient(format!(
            "{table} partition {partition}: no consistent write stream after {MAX_ATTEMPTS} attempts"
        )))
    }

    fn next_seq(&mut self, table: Table, partition: i32) -> Result<Option<u64>, SinkError> {
        // The floor (dead-lettered rows never reach the table) even before the
        // stream is in use: the start-up agreement asks first.
        let floor = match self.streams.get(&(table, partition)) {
            Some(s) => s.stored.floor,
            None => self.stored(table, partition)?.floor,
        };
        self.table_next(table, partition, floor).map(Some)
    }

    fn stored_identities(
        &mut self,
        table: Table,
        partition: i32,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, RowIdentity)>, SinkError> {
        let columns = identity::columns(table);
        let r = self.wh.query(&format!(
            "SELECT outbox_seq, {} FROM `${{dataset}}.{}` WHERE source_partition = {partition} \
             AND outbox_seq >= {from} AND outbox_seq < {to} ORDER BY outbox_seq",
            columns.join(", "),
            table.name()
        ))?;
        (0..r.rows.len())
            .map(|i| {
                let seq = r.get_i64(i, "outbox_seq").ok_or_else(|| {
                    SinkError::Fatal(format!("{table}: a row without outbox_seq"))
                })?;
                let id = columns
                    .iter()
                    .map(|c| identity::cell(r.get(i, c)))
                    .collect();
                Ok((seq as u64, id))
            })
            .collect()
    }

    fn scan_rows(
        &mut self,
        table: Table,
        partitions: &[i32],
        columns: &[&str],
        each: &mut dyn FnMut(&StoredRow) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
        let r = self.wh.query(&format!(
            "SELECT {} FROM `${{dataset}}.{}` WHERE source_partition IN ({})",
            columns.join(", "),
            table.name(),
            list.join(", ")
        ))?;
        for cells in r.rows {
            let map = r.columns.iter().cloned().zip(cells).collect();
            each(&StoredRow(map))?;
        }
        Ok(())
    }

    fn skip(&mut self, table: Table, partition: i32, through_seq: u64) -> Result<(), SinkError> {
        // Dead-lettered rows never reach the table; start a fresh stream after them.
        let stored = StoredStream {
            stream: String::new(),
            base: through_seq + 1,
            floor: through_seq + 1,
        };
        self.persist(table, partition, &stored)?;
        self.streams.insert(
            (table, partition),
            StreamState {
                stored,
                next: Some(through_seq + 1),
            },
        );
        self.replace_stream(table, partition, "rows dead-lettered")
    }
}
