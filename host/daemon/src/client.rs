//! The Rust client of a waft cluster; the `waft` CLI is built on it.
//!
//! Owns the retry policy a client needs: follow a NOT_LEADER hint to the
//! leader's address, wait out BUSY and "no leader yet", all within a bounded
//! number of attempts. Must never retry a TIMEOUT on its own (the command may
//! have applied) nor loop without a bound.

use std::time::Duration;

use bytes::Bytes;
use waft_proto::client::{
    self, Consistency, ErrorCode, ProposeRequest, QueryRequest, StatusRequest, StatusResponse,
    client_client::ClientClient, propose_response, query_response,
};

/// Attempts of one request, counting redirects and waits for a leader.
pub const ATTEMPTS_MAX: usize = 20;
/// Pause before retrying when no leader is known yet (an election runs).
pub const NO_LEADER_PAUSE: Duration = Duration::from_millis(100);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {addr}: {source}; is `waft serve` running there?")]
    Connect { addr: String, source: tonic::transport::Error },
    #[error("{addr}: {status}")]
    Rpc { addr: String, status: tonic::Status },
    /// The server refused the request; `.0.code()` says why.
    #[error("{0}")]
    Refused(client::Error),
    #[error("{addr} sent a response without an outcome; client and server versions may differ")]
    NoOutcome { addr: String },
    #[error("gave up after {attempts} attempts; last error: {last}")]
    GaveUp { attempts: usize, last: Box<ClientError> },
}

/// A successful answer and the log index it reflects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub result: Bytes,
    pub index: u64,
}

async fn connect(addr: &str) -> Result<ClientClient<tonic::transport::Channel>, ClientError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| ClientError::Connect { addr: addr.to_string(), source })?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel =
        endpoint.connect().await.map_err(|source| ClientError::Connect { addr: addr.to_string(), source })?;
    Ok(waft_proto::client_client(channel))
}

/// What to do after a refused attempt.
enum Next {
    Retry { addr: Option<String>, pause: Duration },
    Stop,
}

fn next_step(e: &client::Error) -> Next {
    match e.code() {
        ErrorCode::NotLeader if !e.leader_address.is_empty() => {
            Next::Retry { addr: Some(e.leader_address.clone()), pause: Duration::ZERO }
        }
        ErrorCode::NotLeader => Next::Retry { addr: None, pause: NO_LEADER_PAUSE },
        ErrorCode::Busy => Next::Retry { addr: None, pause: Duration::from_millis(e.retry_after_ms.max(1)) },
        _ => Next::Stop,
    }
}

/// Runs `call` against `addr`, following hints, at most `ATTEMPTS_MAX` times.
async fn with_retries<F, Fut>(addr: &str, mut call: F) -> Result<Answer, ClientError>
where
    F: FnMut(ClientClient<tonic::transport::Channel>, String) -> Fut,
    Fut: std::future::Future<Output = Result<Answer, ClientError>>,
{
    let mut target = addr.to_string();
    let mut last = None;
    for _ in 0..ATTEMPTS_MAX {
        let outcome = match connect(&target).await {
            Ok(c) => call(c, target.clone()).await,
            Err(e) => Err(e),
        };
        let e = match outcome {
            Ok(answer) => return Ok(answer),
            Err(e) => e,
        };
        let next = match &e {
            ClientError::Refused(refusal) => next_step(refusal),
            // The hinted leader may have just died: go back to the first address.
            ClientError::Connect { .. } | ClientError::Rpc { .. } if target != addr => {
                Next::Retry { addr: Some(addr.to_string()), pause: NO_LEADER_PAUSE }
            }
            _ => Next::Stop,
        };
        match next {
            Next::Stop => return Err(e),
            Next::Retry { addr: new, pause } => {
                if let Some(new) = new {
                    target = new;
                }
                tokio::time::sleep(pause).await;
            }
        }
        last = Some(e);
    }
    Err(ClientError::GaveUp {
        attempts: ATTEMPTS_MAX,
        last: Box::new(last.unwrap_or(ClientError::NoOutcome { addr: addr.to_string() })),
    })
}

/// Proposes `command` to `group`, starting at `addr` and following the leader.
pub async fn propose(addr: &str, group: u64, command: Bytes) -> Result<Answer, ClientError> {
    with_retries(addr, |mut c, at| {
        let req = ProposeRequest { group, command: command.clone(), ..Default::default() };
        async move {
            let resp = c.propose(req).await.map_err(|status| ClientError::Rpc { addr: at.clone(), status })?;
            let resp = resp.into_inner();
            match resp.outcome {
                Some(propose_response::Outcome::Result(result)) => Ok(Answer { result, index: resp.index }),
                Some(propose_response::Outcome::Error(e)) => Err(ClientError::Refused(e)),
                None => Err(ClientError::NoOutcome { addr: at }),
            }
        }
    })
    .await
}

/// Queries `group` at `addr` with `consistency`. Reads are served where they
/// are asked (a follower forwards the read index itself), so only "no leader
/// yet" and BUSY are retried here.
pub async fn query(addr: &str, group: u64, request: Bytes, consistency: Consistency) -> Result<Answer, ClientError> {
    with_retries(addr, |mut c, at| {
        let req = QueryRequest { group, request: request.clone(), consistency: consistency as i32 };
        async move {
            let resp = c.query(req).await.map_err(|status| ClientError::Rpc { addr: at.clone(), status })?;
            let resp = resp.into_inner();
            match resp.outcome {
                Some(query_response::Outcome::Result(result)) => Ok(Answer { result, index: resp.applied_index }),
                Some(query_response::Outcome::Error(e)) => Err(ClientError::Refused(e)),
                None => Err(ClientError::NoOutcome { addr: at }),
            }
        }
    })
    .await
}

/// What the node at `addr` knows of `group` (or of all its groups). One attempt.
pub async fn status(addr: &str, group: Option<u64>) -> Result<StatusResponse, ClientError> {
    let mut c = connect(addr).await?;
    let resp = c
        .status(StatusRequest { group })
        .await
        .map_err(|status| ClientError::Rpc { addr: addr.to_string(), status })?
        .into_inner();
    match resp.error {
        Some(e) => Err(ClientError::Refused(e)),
        None => Ok(resp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_followed_and_final_errors_stop() {
        match next_step(&client::Error::not_leader(2, "127.0.0.1:7002")) {
            Next::Retry { addr: Some(a), pause } => assert_eq!((a.as_str(), pause), ("127.0.0.1:7002", Duration::ZERO)),
            _ => panic!("a NOT_LEADER with an address must redirect"),
        }
        assert!(matches!(next_step(&client::Error::not_leader(0, "")), Next::Retry { addr: None, .. }));
        match next_step(&client::Error::busy(30, "full")) {
            Next::Retry { addr: None, pause } => assert_eq!(pause, Duration::from_millis(30)),
            _ => panic!("BUSY must wait and retry in place"),
        }
        for e in [client::Error::timeout(10), client::Error::rejected("no"), client::Error::too_large(9, 4)] {
            assert!(matches!(next_step(&e), Next::Stop), "{e}");
        }
    }
}
