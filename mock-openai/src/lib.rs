//! `vlsbench-mock-openai`: a loopback OpenAI-compatible chat-completions server for vlsbench's
//! tests and benchmarks.
//!
//! [`MockServer::start`] binds `127.0.0.1:0` and serves HTTP/1.1 from a tokio runtime on its own
//! thread, so it is used from plain synchronous code and tests. Every request is recorded
//! ([`RecordedRequest`], in arrival order) and answered by the handler the test gives, which
//! returns a [`MockReply`]: a chat completion, a refusal, a content-filtered reply, any status, a
//! rate limit, a body that is not JSON, a model list, each optionally delayed. Delays do not hold
//! a thread: the server sustains many concurrent delayed requests (64 × 200 ms in well under a
//! second), and a delay longer than the client's timeout simulates a timeout.
//!
//! [`scripted()`] is a ready-made deterministic model and judge; [`label_for`] recomputes the label
//! it gives a judge request.
//!
//! ```no_run
//! use std::time::Duration;
//! use vlsbench_mock_openai::{MockServer, scripted};
//!
//! let server = MockServer::start(scripted(Duration::from_millis(10)));
//! // Configure the openai backend with `base_url = server.base_url()` and `api_key_env = ""`.
//! println!("{}", server.base_url()); // http://127.0.0.1:PORT/v1
//! ```
//!
//! Modules: [`server`] (the server and the recording), [`reply`] (the replies), [`mod@scripted`]
//! (behaviours and request helpers), [`limit`] (a provider's rate limit: token buckets, 429s).

pub mod limit;
pub mod reply;
pub mod scripted;
pub mod server;

pub use limit::{LimitStats, rate_limited};
pub use reply::{MOCK_MODEL, MockReply};
pub use scripted::{is_judge_request, judge_verdict, label_for, last_user_text, scripted, text_parts, with_models};
pub use server::{MockServer, RecordedRequest};
