//! Text to token rows: the pipeline of the `dataset` op, and the document
//! encoder that evaluation shares with it.
//!
//! The files are streamed (a reader thread decompresses and parses them),
//! tokenized in parallel on a rayon pool of its own, chunk by chunk, and
//! reassembled in input order, so the output does not depend on the number
//! of threads. Each document is encoded on its own (never with the batch
//! APIs of `tokenizers`, whose internal parallelism would compete with the
//! pool), through [`DocumentEncoder`]'s fast path for byte-level BPE
//! tokenizers where it applies. Each document's tokens are followed by the
//! separator (by default the tokenizer's eos token) and appended to its
//! split; each split is cut into rows of `seq_len` tokens and its last
//! partial row is dropped.
//!
//! Chat conversations are rendered with the tokenizer's chat template. With
//! `loss_on: assistant` (the default) the dataset gets a loss mask that
//! marks the assistant replies: each conversation is cut into its replies
//! and the text between them
//! ([`ChatTemplate::render_with_replies`](crate::io::chat::ChatTemplate::render_with_replies)),
//! each piece is tokenized on its own and the ids are concatenated, so every
//! token belongs to exactly one piece and the mask is exact. The ids then
//! equal those of the whole rendered text except where a tokenizer would
//! have merged characters across a piece's bound (with SmolLM2's, only when
//! a reply starts with whitespace that the newline of the role header could
//! join); they decode to the same text either way.
//!
//! The steps, in the order data flows through them: `params` (what to
//! build), `tokenizer` (the tokenizer folder, the separator), `files`
//! (formats, decompression), `documents` (the streaming reader), `chunks`
//! (the unit of parallel work and its tokenization), `encoder` (one
//! document's ids), `writer` (the dataset folder) and `builder`, which runs
//! them. The folder layout and its reader are in [`crate::io::dataset`].

mod builder;
mod chunks;
mod documents;
mod encoder;
mod files;
mod params;
mod tokenizer;
mod writer;

pub use builder::build_dataset;
pub use encoder::DocumentEncoder;
pub use files::DataFormat;
pub(crate) use files::file_format;
pub(crate) use files::json_kind;
pub use files::open_text;
pub use params::{DatasetParams, LossOn};
