//! The unit of parallel work: a chunk of documents in reading order, and
//! how one is tokenized. A conversation is rendered through the chat
//! template (piece by piece, with its loss mask, when only the replies are
//! targets); a sample of documents also goes through the exact path of
//! `tokenizers` to check the fast one.

use anyhow::{Context, Result, anyhow, bail};

use super::documents::{Body, Doc};
use super::encoder::{DocumentEncoder, EXACT_ENV};
use super::params::LossOn;
use crate::io::chat::{ChatTemplate, RenderedChat};

/// A document's ids.
pub(super) struct Encoded {
    pub ids: Vec<u32>,
    /// One byte per id (1: a target) for a masked conversation; `None`
    /// when all of them are targets.
    pub mask: Option<Vec<u8>>,
    /// Bytes of the text (a conversation as rendered).
    pub text_bytes: u64,
}

/// Documents handed to one tokenization task.
pub(super) struct Chunk {
    /// Its place in reading order, from 0.
    pub seq: u64,
    pub docs: Vec<Doc>,
}

/// Bytes of text (or documents) after which a chunk is closed.
const CHUNK_BYTES: usize = 256 * 1024;
const CHUNK_DOCS: usize = 512;

/// Gathers the reader's documents into chunks, in reading order, up to the
/// document limit.
pub(super) struct Chunker {
    seq: u64,
    docs: Vec<Doc>,
    bytes: usize,
    taken: u64,
    limit: u64,
}

impl Chunker {
    /// Takes at most `max_documents` documents (all when `None`).
    pub fn new(max_documents: Option<u64>) -> Self {
        Self {
            seq: 0,
            docs: Vec::new(),
            bytes: 0,
            taken: 0,
            limit: max_documents.unwrap_or(u64::MAX),
        }
    }

    /// Whether the document limit leaves room for another document.
    pub fn wants_more(&self) -> bool {
        self.taken < self.limit
    }

    /// Adds a document; returns the chunk it closed, if any.
    pub fn push(&mut self, doc: Doc) -> Option<Chunk> {
        self.taken += 1;
        self.bytes += doc.size();
        self.docs.push(doc);
        if self.bytes < CHUNK_BYTES && self.docs.len() < CHUNK_DOCS {
            return None;
        }
        self.bytes = 0;
        Some(self.close())
    }

    /// The last, partial chunk, if it has documents.
    pub fn finish(mut self) -> Option<Chunk> {
        (!self.docs.is_empty()).then(|| self.close())
    }

    fn close(&mut self) -> Chunk {
        let chunk = Chunk {
            seq: self.seq,
            docs: std::mem::take(&mut self.docs),
        };
        self.seq += 1;
        chunk
    }
}

/// Tokenizes chunks: what a tokenization task needs, shared by all of them.
pub(super) struct ChunkTokenizer<'a> {
    pub encoder: &'a DocumentEncoder<'a>,
    pub chat: Option<&'a ChatTemplate>,
    pub loss_on: LossOn,
}

impl ChunkTokenizer<'_> {
    /// The ids of every document of `chunk`, in order.
    pub fn tokenize(&self, chunk: &Chunk) -> Result<Vec<Encoded>> {
        let mut out = Vec::with_capacity(chunk.docs.len());
        for (i, doc) in chunk.docs.iter().enumerate() {
            let check = self.encoder.is_fast() && verified(chunk, i);
            out.push(self.tokenize_document(doc, check)?);
        }
        Ok(out)
    }

    /// A document's ids; with `check`, also through the exact path.
    fn tokenize_document(&self, doc: &Doc, check: bool) -> Result<Encoded> {
        let encoder = self.encoder;
        let (messages, at) = match &doc.body {
            Body::Text(text) => {
                return Ok(Encoded {
                    ids: encode_checked(encoder, text, check, &doc.key)?,
                    mask: None,
                    text_bytes: text.len() as u64,
                });
            }
            Body::Chat { messages, at, .. } => (messages, at),
        };
        let chat = self
            .chat
            .ok_or_else(|| anyhow!("{at}: a chat conversation without a chat template"))?;
        match self.loss_on {
            LossOn::All => {
                let text = chat
                    .render(messages, false)
                    .with_context(|| format!("{at}: cannot render the conversation"))?;
                Ok(Encoded {
                    ids: encode_checked(encoder, &text, check, &doc.key)?,
                    mask: None,
                    text_bytes: text.len() as u64,
                })
            }
            LossOn::Assistant => {
                let rendered = chat.render_with_replies(messages).with_context(|| {
                    format!("{at}: cannot render the conversation with its loss mask")
                })?;
                encode_masked(encoder, &rendered, check, &doc.key)
            }
        }
    }
}

/// Whether the `i`th document of a chunk is also tokenized by the exact
/// path, to check the fast one: all of the first chunk, and the first
/// document of every 16th chunk.
fn verified(chunk: &Chunk, i: usize) -> bool {
    chunk.seq == 0 || (i == 0 && chunk.seq.is_multiple_of(16))
}

/// A conversation's ids, piece by piece, and its mask: 1 on the replies.
fn encode_masked(
    encoder: &DocumentEncoder,
    chat: &RenderedChat,
    check: bool,
    key: &str,
) -> Result<Encoded> {
    let mut ids = Vec::with_capacity(chat.text.len() / 3 + 8);
    let mut mask = Vec::with_capacity(ids.capacity());
    for (piece, reply) in chat.segments() {
        let piece_ids = encode_checked(encoder, piece, check, key)?;
        mask.resize(mask.len() + piece_ids.len(), reply as u8);
        ids.extend_from_slice(&piece_ids);
    }
    Ok(Encoded {
        ids,
        mask: Some(mask),
        text_bytes: chat.text.len() as u64,
    })
}

/// The ids of `text`; with `check`, also through the exact path, which must
/// agree.
fn encode_checked(
    encoder: &DocumentEncoder,
    text: &str,
    check: bool,
    key: &str,
) -> Result<Vec<u32>> {
    let ids = encoder
        .encode(text)
        .map_err(|e| anyhow!("cannot tokenize document `{key}`: {e:#}"))?;
    if check {
        let exact = encoder
            .encode_exact(text)
            .map_err(|e| anyhow!("cannot tokenize document `{key}`: {e:#}"))?;
        if exact != ids {
            bail!(
                "the fast tokenization path disagrees with `tokenizers` on document `{key}` ({} ids instead of {}); this is a bug: set {EXACT_ENV}=1 to tokenize through `tokenizers` alone",
                ids.len(),
                exact.len()
            );
        }
    }
    Ok(ids)
}
