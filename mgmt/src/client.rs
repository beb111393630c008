//! A blocking client of a node's management API (what the CLI uses).

use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{ErrorBody, Event};

/// A failed request, with advice.
#[derive(Debug)]
pub enum ClientError {
    /// The node could not be reached at all.
    Unreachable { url: String, detail: String },
    /// The node answered with an error.
    Api { status: u16, body: Box<ErrorBody> },
    /// The answer was not what the API documents.
    Protocol(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable { url, detail } => write!(
                f,
                "cannot reach the node at {url} ({detail}): is `switchyard serve` running with \
                 [management] listen set to that address? (`switchyard up` listens on \
                 127.0.0.1:8080; pick another node with --node URL)"
            ),
            ClientError::Api { status, body } => {
                write!(f, "{} (HTTP {status})", body.error)?;
                for p in &body.problems {
                    write!(f, "\n  - {p}")?;
                }
                if let Some(c) = &body.change {
                    write!(f, "\nchange {} is {}", c.id, c.state)?;
                }
                if let Some(h) = &body.hint {
                    write!(f, "\nhint: {h}")?;
                }
                Ok(())
            }
            ClientError::Protocol(m) => write!(f, "unexpected answer from the node: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A node's API at `base` (`http://host:port`), with an optional bearer token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        let base = base.trim_end_matches('/').to_string();
        let base = if base.contains("://") {
            base
        } else {
            format!("http://{base}")
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(900))
            .build();
        Client {
            base,
            token: token.filter(|t| !t.is_empty()),
            agent,
        }
    }

    /// The node's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let mut r = self.agent.request(method, &format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        r
    }

    fn answer(
        &self,
        r: Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, ClientError> {
        match r {
            Ok(resp) => Ok(resp),
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let body = serde_json::from_str::<ErrorBody>(&text).unwrap_or(ErrorBody {
                    error: if text.is_empty() {
                        format!("HTTP {status}")
                    } else {
                        text
                    },
                    hint: None,
                    problems: Vec::new(),
                    change: None,
                });
                Err(ClientError::Api {
                    status,
                    body: Box::new(body),
                })
            }
            Err(ureq::Error::Transport(t)) => Err(ClientError::Unreachable {
                url: self.base.clone(),
                detail: t.to_string(),
            }),
        }
    }

    /// GET `path` and decode the JSON answer.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.answer(self.request("GET", path).call())?;
        resp.into_json()
            .map_err(|e| ClientError::Protocol(format!("GET {path}: {e}")))
    }

    /// GET `path` as text.
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let resp = self.answer(self.request("GET", path).call())?;
        resp.into_string()
            .map_err(|e| ClientError::Protocol(format!("GET {path}: {e}")))
    }

    /// POST JSON to `path`; returns the HTTP status and the decoded answer.
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(u16, T), ClientError> {
        let resp = self.answer(self.request("POST", path).send_json(body))?;
        let status = resp.status();
        let v = resp
            .into_json()
            .map_err(|e| ClientError::Protocol(format!("POST {path}: {e}")))?;
        Ok((status, v))
    }

    /// PUT JSON to `path`; returns the decoded answer.
    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self.answer(self.request("PUT", path).send_json(body))?;
        resp.into_json()
            .map_err(|e| ClientError::Protocol(format!("PUT {path}: {e}")))
    }

    /// DELETE `path`; returns the decoded answer.
    pub fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.answer(self.request("DELETE", path).call())?;
        resp.into_json()
            .map_err(|e| ClientError::Protocol(format!("DELETE {path}: {e}")))
    }

    /// DELETE `path`; returns the HTTP status.
    pub fn delete(&self, path: &str) -> Result<u16, ClientError> {
        let resp = self.answer(self.request("DELETE", path).call())?;
        Ok(resp.status())
    }

    /// POST raw text with a content type; 4xx answers with a JSON body of type `T`
    /// (validation reports) are returned, not turned into errors.
    pub fn post_text<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Result<(u16, T), ClientError> {
        let r = self
            .request("POST", path)
            .set("Content-Type", content_type)
            .send_string(body);
        let resp = match r {
            Err(ureq::Error::Status(422, resp)) => resp,
            other => self.answer(other)?,
        };
        let status = resp.status();
        let v = resp
            .into_json()
            .map_err(|e| ClientError::Protocol(format!("POST {path}: {e}")))?;
        Ok((status, v))
    }

    /// Follow the event stream, calling `f` for each event until it returns false or
    /// the stream ends.
    pub fn follow_events(
        &self,
        since: Option<u64>,
        mut f: impl FnMut(Event) -> bool,
    ) -> Result<(), ClientError> {
        let path = match since {
            Some(s) => format!("/api/v1/events/stream?since={s}"),
            None => "/api/v1/events/stream".to_string(),
        };
        let resp = self.answer(
            self.request("GET", &path)
                .set("Accept", "text/event-stream")
                .call(),
        )?;
        let mut data = String::new();
        for line in BufReader::new(resp.into_reader()).lines() {
            let line = line.map_err(|e| ClientError::Protocol(format!("event stream: {e}")))?;
            if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                if let Ok(ev) = serde_json::from_str::<Event>(&data) {
                    if !f(ev) {
                        return Ok(());
                    }
                }
                data.clear();
            }
        }
        Ok(())
    }
}
