//! Errors as RFC 9457 problem details, the way this project's services
//! answer them, written once: each service lists its own causes (a
//! [`ProblemKind`]: slug, title, status, advice) and renders them here, with
//! `Retry-After` where the client should come back; `GET /problems/{type}`
//! documents each cause. Also the small pieces of an axum service both
//! services share: a JSON answer and a request run as a task that owns its
//! in-flight permit.

use std::future::Future;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;

/// One cause of an error answer, as a service lists them.
pub trait ProblemKind: Copy + 'static {
    /// Every cause, for `GET /problems/{type}`.
    const ALL: &'static [Self];
    /// The last part of the `type` URI (`/problems/{slug}`).
    fn slug(self) -> &'static str;
    fn title(self) -> &'static str;
    fn status(self) -> StatusCode;
    /// What the caller should do about it.
    fn advice(self) -> &'static str;
}

/// Members a problem may add: the request field at fault, the key or the
/// event it concerns.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Members<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<&'a str>,
}

#[derive(Serialize)]
struct ProblemJson<'a> {
    r#type: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    #[serde(flatten)]
    members: Members<'a>,
}

/// The `application/problem+json` answer for `problem`, with `Retry-After:
/// retry_after_s` when given.
pub fn response(problem: impl ProblemKind, detail: &str, members: Members<'_>, retry_after_s: Option<u32>) -> Response {
    let status = problem.status();
    let body = ProblemJson {
        r#type: format!("/problems/{}", problem.slug()),
        title: problem.title(),
        status: status.as_u16(),
        detail,
        members,
    };
    // A struct of strings and numbers always serialises.
    let body = serde_json::to_string(&body).unwrap_or_default();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(seconds) = retry_after_s {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// `GET /problems/{slug}`: what a cause means and what to do, or `None`
/// for a slug the service does not have (the caller answers its 404).
pub fn document<P: ProblemKind>(slug: &str) -> Option<Response> {
    let problem = P::ALL.iter().find(|p| p.slug() == slug)?;
    let body = serde_json::json!({
        "type": format!("/problems/{}", problem.slug()),
        "title": problem.title(),
        "status": problem.status().as_u16(),
        "what_to_do": problem.advice(),
    });
    Some(json(StatusCode::OK, body.to_string()))
}

/// A JSON answer.
pub fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

/// Runs a request's `work` as a task of its own that owns `permit`: a client
/// that disconnects neither cancels the work halfway (a payment between its
/// claim and its commit) nor frees the in-flight slot while the work runs.
/// `Err` says why the task failed.
pub async fn run_owning(
    permit: OwnedSemaphorePermit,
    work: impl Future<Output = Response> + Send + 'static,
) -> Result<Response, String> {
    let task = tokio::spawn(async move {
        let response = work.await;
        drop(permit);
        response
    });
    task.await.map_err(|e| format!("the request failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Cause {
        Busy,
        Bad,
    }

    impl ProblemKind for Cause {
        const ALL: &'static [Cause] = &[Cause::Busy, Cause::Bad];
        fn slug(self) -> &'static str {
            match self {
                Cause::Busy => "busy",
                Cause::Bad => "bad",
            }
        }
        fn title(self) -> &'static str {
            "t"
        }
        fn status(self) -> StatusCode {
            match self {
                Cause::Busy => StatusCode::SERVICE_UNAVAILABLE,
                Cause::Bad => StatusCode::BAD_REQUEST,
            }
        }
        fn advice(self) -> &'static str {
            "a"
        }
    }

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn a_problem_renders_its_members_in_order_and_its_retry_after() {
        let members = Members {
            field: Some("amount"),
            idempotency_key: Some("k"),
            ..Members::default()
        };
        let answer = response(Cause::Busy, "d", members, Some(1));
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers()[header::RETRY_AFTER], "1");
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(
            body(answer).await,
            r#"{"type":"/problems/busy","title":"t","status":503,"detail":"d","field":"amount","idempotency_key":"k"}"#
        );
        let plain = response(Cause::Bad, "d", Members::default(), None);
        assert!(!plain.headers().contains_key(header::RETRY_AFTER));
    }

    #[tokio::test]
    async fn a_cause_is_documented_by_its_slug() {
        let page = document::<Cause>("bad").expect("known");
        assert_eq!(
            body(page).await,
            r#"{"status":400,"title":"t","type":"/problems/bad","what_to_do":"a"}"#
        );
        assert!(document::<Cause>("nope").is_none());
    }
}
