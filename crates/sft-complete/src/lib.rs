//! `sft-complete`: completions from a model, behind one trait, and the data jobs that need them.
//!
//! - [`Completer`]: complete [`CompletionRequest`]s (a chat or a text [`Prompt`], sampling
//!   settings, a per-request seed), one result per request. Implementations: [`OpenAiCompleter`]
//!   for any OpenAI-compatible server (vLLM, llama.cpp, hosted APIs) here, and
//!   `sft_local::LocalCompleter` for the local model on libtorch.
//! - [`OpenAiClient`]: the one HTTP client of the workspace (retries honouring `Retry-After`,
//!   none on 401/403, a request cache, the API key never printed); MT-Bench's judge uses it too.
//! - [`rft`]: `k` sampled reasoning paths per GSM8K question, as resumable shards for
//!   `sft_compose::rft`'s filter.
//! - [`server::ServerProcess`]: the user's server command (vLLM, ...) started on a model for one
//!   job and always stopped.
//! - [`instag`]: an InsTag-style tagger writing the tag file `sft_compose::load_tag_file` reads.
//!
//! No libtorch: this crate builds and tests without it.

#![deny(missing_docs)]

mod completer;
mod error;
pub mod instag;
pub mod openai;
pub mod rft;
pub mod server;

pub use completer::{Completer, Completion, CompletionRequest, Prompt, SamplingParams};
pub use error::{Error, ErrorKind, Result};
pub use openai::{ApiKey, ClientStats, EndpointConfig, OpenAiClient, OpenAiCompleter, Route};
