//! SentencePiece in Rust, and the slow `LlamaTokenizer` that the original LLaVA code base uses.
//!
//! - [`SentencePieceModel`] loads a `.model` file (the `ModelProto` protobuf: pieces with score
//!   and type, `trainer_spec`, `normalizer_spec`) and reproduces the sentencepiece library
//!   (0.2.x) for BPE models: its normalizer without a precompiled character map (Llama's
//!   `identity` rule: whitespace escaped to `▁`, `add_dummy_prefix` and
//!   `remove_extra_whitespaces` honoured, user-defined symbols kept whole), `bpe_model.cc`'s merge
//!   loop (the adjacent pair whose concatenation is a piece with the highest score, leftmost on
//!   ties; unused pieces re-split), unknown characters as byte pieces under `byte_fallback` or as
//!   one merged unknown piece otherwise, and the decoder (`▁` to space, the leading one dropped
//!   when the normalizer adds or strips whitespace, runs of byte pieces to UTF-8 with each
//!   invalid byte becoming U+FFFD, control pieces invisible, `<unk>` as ` ⁇ `).
//! - [`SlowLlamaTokenizer`] is the slow `LlamaTokenizer` with `legacy=False` of transformers
//!   4.37.2 (the version the LLaVA code base pins; it loads the tokenizer with
//!   `use_fast=False`): the model loaded with `add_dummy_prefix` switched off, `tokenize()`
//!   replacing `▁` by a space and prefixing `▁`, the special tokens `<s>`, `</s>`, `<unk>` split
//!   out of the text as its added-token trie does, each other chunk that starts with `▁` or a
//!   space encoded as `<unk>` + chunk with the unk pieces dropped, a lone leading `▁` before a
//!   special token dropped; decoding through `convert_tokens_to_string`.
//!
//! Unigram, word and char models, precompiled normalization maps (`nmt_nfkc`), denormalizers
//! and `treat_whitespace_as_suffix` are refused with [`SentencePieceError::Unsupported`] rather
//! than approximated.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use prost::Message;

/// The part of sentencepiece's `sentencepiece_model.proto` that encoding and decoding read
/// (proto2; absent fields read as the proto's defaults through the generated accessors).
pub mod proto {
    /// `sentencepiece.ModelProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(message, repeated, tag = "1")]
        pub pieces: Vec<SentencePiece>,
        #[prost(message, optional, tag = "2")]
        pub trainer_spec: Option<TrainerSpec>,
        #[prost(message, optional, tag = "3")]
        pub normalizer_spec: Option<NormalizerSpec>,
        #[prost(message, optional, tag = "5")]
        pub denormalizer_spec: Option<NormalizerSpec>,
    }

    /// `sentencepiece.ModelProto.SentencePiece`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SentencePiece {
        #[prost(string, optional, tag = "1")]
        pub piece: Option<String>,
        #[prost(float, optional, tag = "2")]
        pub score: Option<f32>,
        #[prost(enumeration = "PieceType", optional, tag = "3", default = "Normal")]
        pub r#type: Option<i32>,
    }

    /// `sentencepiece.ModelProto.SentencePiece.Type`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum PieceType {
        Normal = 1,
        Unknown = 2,
        Control = 3,
        UserDefined = 4,
        Unused = 5,
        Byte = 6,
    }

    /// `sentencepiece.TrainerSpec` (the fields that matter after training).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrainerSpec {
        #[prost(enumeration = "ModelType", optional, tag = "3", default = "Unigram")]
        pub model_type: Option<i32>,
        #[prost(int32, optional, tag = "4", default = "8000")]
        pub vocab_size: Option<i32>,
        #[prost(bool, optional, tag = "24", default = "false")]
        pub treat_whitespace_as_suffix: Option<bool>,
        #[prost(bool, optional, tag = "35", default = "false")]
        pub byte_fallback: Option<bool>,
        #[prost(int32, optional, tag = "40", default = "0")]
        pub unk_id: Option<i32>,
        #[prost(int32, optional, tag = "41", default = "1")]
        pub bos_id: Option<i32>,
        #[prost(int32, optional, tag = "42", default = "2")]
        pub eos_id: Option<i32>,
        #[prost(int32, optional, tag = "43", default = "-1")]
        pub pad_id: Option<i32>,
        #[prost(string, optional, tag = "44")]
        pub unk_surface: Option<String>,
        #[prost(string, optional, tag = "45")]
        pub unk_piece: Option<String>,
        #[prost(string, optional, tag = "46")]
        pub bos_piece: Option<String>,
        #[prost(string, optional, tag = "47")]
        pub eos_piece: Option<String>,
        #[prost(string, optional, tag = "48")]
        pub pad_piece: Option<String>,
    }

    /// `sentencepiece.TrainerSpec.ModelType`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum ModelType {
        Unigram = 1,
        Bpe = 2,
        Word = 3,
        Char = 4,
    }

    /// `sentencepiece.NormalizerSpec`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NormalizerSpec {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub precompiled_charsmap: Option<Vec<u8>>,
        #[prost(bool, optional, tag = "3", default = "true")]
        pub add_dummy_prefix: Option<bool>,
        #[prost(bool, optional, tag = "4", default = "true")]
        pub remove_extra_whitespaces: Option<bool>,
        #[prost(bool, optional, tag = "5", default = "true")]
        pub escape_whitespaces: Option<bool>,
        #[prost(string, optional, tag = "6")]
        pub normalization_rule_tsv: Option<String>,
    }
}

pub use proto::{ModelType, PieceType};

/// U+2581 LOWER ONE EIGHTH BLOCK, sentencepiece's escaped space.
pub const SPACE_SYMBOL: &str = "\u{2581}";
const SPACE_CHAR: char = '\u{2581}';
/// What sentencepiece writes for `<unk>` when the model names no `unk_surface`.
pub const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";
const REPLACEMENT_CHARACTER: char = '\u{FFFD}';

#[derive(Debug, thiserror::Error)]
pub enum SentencePieceError {
    #[error("cannot read SentencePiece model {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a SentencePiece model (protobuf: {source})")]
    Protobuf {
        path: PathBuf,
        #[source]
        source: prost::DecodeError,
    },
    #[error("invalid SentencePiece model {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("SentencePiece model {path}: {what} is not supported")]
    Unsupported { path: PathBuf, what: String },
    #[error("token id {id} is out of range for {path} ({vocab_size} pieces)")]
    IdOutOfRange { path: PathBuf, id: u32, vocab_size: usize },
}

/// One piece of the vocabulary.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// One piece of an encoding: its text (`<0xNN>` for a byte piece) and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedPiece {
    pub piece: String,
    pub id: u32,
}

/// The normalizer flags the model file specifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalizerSettings {
    /// The rule's name (`identity` for Llama); informational, the behaviour follows the flags.
    pub name: String,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

/// A loaded SentencePiece BPE model.
#[derive(Clone, Debug)]
pub struct SentencePieceModel {
    source: PathBuf,
    pieces: Vec<Piece>,
    /// NORMAL, USER_DEFINED and UNUSED pieces: the ones merges can produce (`pieces_`).
    mergeable: HashMap<String, u32>,
    /// UNKNOWN, CONTROL and BYTE pieces (`reserved_id_map_`).
    reserved: HashMap<String, u32>,
    /// USER_DEFINED pieces, matched longest-first before splitting into characters.
    user_defined: Vec<String>,
    unk_id: u32,
    byte_fallback: bool,
    unk_surface: String,
    normalizer: NormalizerSettings,
}

fn byte_piece(b: u8) -> String {
    format!("<0x{b:02X}>")
}

/// `PieceToByte`: exactly the 256 strings `<0x00>` … `<0xFF>` (upper-case hex).
fn piece_to_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 || !hex.bytes().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// sentencepiece's `string_util::DecodeUTF8`: one code point and its length, or `None` for a
/// malformed sequence (which then counts as one byte).
fn decode_utf8_prefix(b: &[u8]) -> Option<(char, usize)> {
    let trail = |x: u8| x & 0xC0 == 0x80;
    let valid = |cp: u32| cp < 0xD800 || (0xE000..=0x10FFFF).contains(&cp);
    let b0 = *b.first()?;
    let (cp, len) = if b0 < 0x80 {
        (u32::from(b0), 1)
    } else if b.len() >= 2 && b0 & 0xE0 == 0xC0 {
        let cp = (u32::from(b0 & 0x1F) << 6) | u32::from(b[1] & 0x3F);
        if !(trail(b[1]) && cp >= 0x80 && valid(cp)) {
            return None;
        }
        (cp, 2)
    } else if b.len() >= 3 && b0 & 0xF0 == 0xE0 {
        let cp = (u32::from(b0 & 0x0F) << 12) | (u32::from(b[1] & 0x3F) << 6) | u32::from(b[2] & 0x3F);
        if !(trail(b[1]) && trail(b[2]) && cp >= 0x800 && valid(cp)) {
            return None;
        }
        (cp, 3)
    } else if b.len() >= 4 && b0 & 0xF8 == 0xF0 {
        let cp = (u32::from(b0 & 0x07) << 18)
            | (u32::from(b[1] & 0x3F) << 12)
            | (u32::from(b[2] & 0x3F) << 6)
            | u32::from(b[3] & 0x3F);
        if !(trail(b[1]) && trail(b[2]) && trail(b[3]) && cp >= 0x10000 && valid(cp)) {
            return None;
        }
        (cp, 4)
    } else {
        return None;
    };
    char::from_u32(cp).map(|c| (c, len))
}

/// Appends the text of a run of byte pieces: one character per valid UTF-8 sequence, U+FFFD
/// for each byte that does not start one (sentencepiece's `ProcessBytePieces`).
fn push_bytes_lossy_like_sentencepiece(bytes: &[u8], out: &mut String) {
    let mut rest = bytes;
    while !rest.is_empty() {
        match decode_utf8_prefix(rest) {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push(REPLACEMENT_CHARACTER);
                rest = &rest[1..];
            }
        }
    }
}

/// A merge candidate of the BPE loop; the heap's top is the highest score, then the leftmost.
struct SymbolPair {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl SymbolPair {
    /// C++ `<` on floats: -0.0 and 0.0 are equal.
    fn key(&self) -> f32 {
        self.score + 0.0
    }
}

impl PartialEq for SymbolPair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for SymbolPair {}
impl PartialOrd for SymbolPair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SymbolPair {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().total_cmp(&other.key()).then_with(|| other.left.cmp(&self.left))
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    prev: Option<usize>,
    next: Option<usize>,
    freeze: bool,
    start: usize,
    len: usize,
}

impl SentencePieceModel {
    /// Reads and validates a `.model` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SentencePieceError> {
        let path = path.as_ref();
        Self::from_proto(read_model_proto(path)?, path)
    }

    /// Parses a serialized `ModelProto`; `source` names it in errors.
    pub fn from_bytes(bytes: &[u8], source: impl Into<PathBuf>) -> Result<Self, SentencePieceError> {
        let source = source.into();
        let proto = proto::ModelProto::decode(bytes)
            .map_err(|e| SentencePieceError::Protobuf { path: source.clone(), source: e })?;
        Self::from_proto(proto, source)
    }

    /// Builds the model from a decoded `ModelProto` (possibly edited, as transformers does).
    pub fn from_proto(proto: proto::ModelProto, source: impl Into<PathBuf>) -> Result<Self, SentencePieceError> {
        let source = source.into();
        let invalid = |reason: String| SentencePieceError::Invalid { path: source.clone(), reason };
        let unsupported = |what: String| SentencePieceError::Unsupported { path: source.clone(), what };

        let trainer = proto.trainer_spec.clone().unwrap_or_default();
        let model_type = trainer.model_type();
        if model_type != ModelType::Bpe {
            return Err(unsupported(format!("model type {model_type:?} (only BPE is implemented)")));
        }
        if trainer.treat_whitespace_as_suffix() {
            return Err(unsupported("treat_whitespace_as_suffix".into()));
        }
        let spec = proto.normalizer_spec.clone().unwrap_or_default();
        if !spec.precompiled_charsmap().is_empty() {
            return Err(unsupported(format!("the precompiled normalization map of rule {:?}", spec.name())));
        }
        if proto.denormalizer_spec.as_ref().is_some_and(|d| !d.precompiled_charsmap().is_empty()) {
            return Err(unsupported("a denormalizer".into()));
        }
        let byte_fallback = trainer.byte_fallback();

        let n = proto.pieces.len();
        if u32::try_from(n).is_err() {
            return Err(invalid(format!("{n} pieces")));
        }
        let mut pieces = Vec::with_capacity(n);
        let mut mergeable = HashMap::new();
        let mut reserved = HashMap::new();
        let mut user_defined = Vec::new();
        let mut unk_id = None;
        for (i, p) in proto.pieces.iter().enumerate() {
            let id = i as u32;
            let text = p.piece().to_owned();
            if text.is_empty() {
                return Err(invalid(format!("piece {id} is empty")));
            }
            if text.contains('\0') {
                return Err(invalid(format!("piece {id} contains a NUL character")));
            }
            let kind = PieceType::try_from(p.r#type.unwrap_or(PieceType::Normal as i32))
                .map_err(|_| invalid(format!("piece {id} ({text:?}) has an unknown type {:?}", p.r#type)))?;
            let map = match kind {
                PieceType::Normal | PieceType::UserDefined | PieceType::Unused => &mut mergeable,
                PieceType::Unknown | PieceType::Control | PieceType::Byte => &mut reserved,
            };
            if map.insert(text.clone(), id).is_some() {
                return Err(invalid(format!("piece {text:?} is defined twice")));
            }
            match kind {
                PieceType::UserDefined => user_defined.push(text.clone()),
                PieceType::Unknown if unk_id.is_some() => return Err(invalid("two unknown pieces".into())),
                PieceType::Unknown => unk_id = Some(id),
                PieceType::Byte if !byte_fallback => {
                    return Err(invalid(format!("byte piece {text:?} although byte_fallback is false")));
                }
                PieceType::Byte if piece_to_byte(&text).is_none() => {
                    return Err(invalid(format!("byte piece {text:?} is not <0xNN>")));
                }
                _ => {}
            }
            pieces.push(Piece { piece: text, score: p.score(), kind });
        }
        let unk_id = unk_id.ok_or_else(|| invalid("no unknown piece".into()))?;
        // longest first, so that the first match is the longest (PrefixMatcher)
        user_defined.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));

        let unk_surface = trainer.unk_surface.clone().unwrap_or_else(|| DEFAULT_UNK_SURFACE.to_owned());
        let normalizer = NormalizerSettings {
            name: spec.name().to_owned(),
            add_dummy_prefix: spec.add_dummy_prefix(),
            remove_extra_whitespaces: spec.remove_extra_whitespaces(),
            escape_whitespaces: spec.escape_whitespaces(),
        };
        Ok(Self { source, pieces, mergeable, reserved, user_defined, unk_id, byte_fallback, unk_surface, normalizer })
    }

    /// The file (or label) the model came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn normalizer(&self) -> &NormalizerSettings {
        &self.normalizer
    }

    pub fn byte_fallback(&self) -> bool {
        self.byte_fallback
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    pub fn piece(&self, id: u32) -> Option<&Piece> {
        self.pieces.get(id as usize)
    }

    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.piece(id).map(|p| p.piece.as_str())
    }

    fn kind(&self, id: u32) -> Option<PieceType> {
        self.piece(id).map(|p| p.kind)
    }

    /// `PieceToId`: reserved pieces first, then the others; anything else is the unknown id.
    pub fn piece_to_id(&self, piece: &str) -> u32 {
        self.reserved.get(piece).or_else(|| self.mergeable.get(piece)).copied().unwrap_or(self.unk_id)
    }

    /// Whether `piece` is in the vocabulary at all.
    pub fn contains_piece(&self, piece: &str) -> bool {
        self.reserved.contains_key(piece) || self.mergeable.contains_key(piece)
    }

    /// Length of the user-defined symbol at the start of `s`, if one is there (longest match).
    fn user_defined_prefix(&self, s: &str) -> Option<usize> {
        self.user_defined.iter().find(|u| s.starts_with(u.as_str())).map(String::len)
    }

    /// One normalization unit at the start of `s`: a user-defined symbol or one character.
    fn prefix_len(&self, s: &str) -> (usize, bool) {
        match self.user_defined_prefix(s) {
            Some(n) => (n, true),
            None => (s.chars().next().map_or(0, char::len_utf8), false),
        }
    }

    /// sentencepiece's `Normalizer::Normalize` for a model without a character map.
    pub fn normalize(&self, text: &str) -> String {
        let spec = &self.normalizer;
        let mut input = text;
        if input.is_empty() {
            return String::new();
        }
        if spec.remove_extra_whitespaces {
            while !input.is_empty() {
                let (n, _) = self.prefix_len(input);
                if &input[..n] != " " {
                    break;
                }
                input = &input[n..];
            }
        }
        if input.is_empty() {
            return String::new();
        }
        let space = if spec.escape_whitespaces { SPACE_SYMBOL } else { " " };
        let mut out = String::with_capacity(input.len() * 3);
        if spec.add_dummy_prefix {
            out.push_str(space);
        }
        let mut is_prev_space = spec.remove_extra_whitespaces;
        while !input.is_empty() {
            let (n, _) = self.prefix_len(input);
            let mut unit = &input[..n];
            while is_prev_space && let Some(rest) = unit.strip_prefix(' ') {
                unit = rest;
            }
            if !unit.is_empty() {
                if spec.escape_whitespaces {
                    out.push_str(&unit.replace(' ', SPACE_SYMBOL));
                } else {
                    out.push_str(unit);
                }
                is_prev_space = unit.ends_with(' ');
            }
            input = &input[n..];
            if !spec.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if spec.remove_extra_whitespaces {
            while let Some(rest) = out.strip_suffix(space) {
                out.truncate(rest.len());
            }
        }
        out
    }

    /// `bpe::Model::Encode` on normalized text: (piece, id) with the unknown id for pieces
    /// outside the vocabulary.
    fn bpe<'a>(&self, normalized: &'a str) -> Vec<(&'a str, u32)> {
        let mut symbols: Vec<Symbol> = Vec::new();
        let mut pos = 0;
        while pos < normalized.len() {
            let (n, freeze) = self.prefix_len(&normalized[pos..]);
            let index = symbols.len();
            symbols.push(Symbol {
                prev: index.checked_sub(1),
                next: (pos + n < normalized.len()).then_some(index + 1),
                freeze,
                start: pos,
                len: n,
            });
            pos += n;
        }
        if symbols.is_empty() {
            return Vec::new();
        }

        let mut agenda = BinaryHeap::new();
        let mut rev_merge: HashMap<&'a str, (&'a str, &'a str)> = HashMap::new();
        let text = |s: &Symbol| &normalized[s.start..s.start + s.len];
        let mut maybe_add =
            |symbols: &[Symbol], agenda: &mut BinaryHeap<SymbolPair>, left: Option<usize>, right: Option<usize>| {
                let (Some(left), Some(right)) = (left, right) else { return };
                let (l, r) = (&symbols[left], &symbols[right]);
                if l.freeze || r.freeze {
                    return;
                }
                let piece = &normalized[l.start..l.start + l.len + r.len];
                let Some(&id) = self.mergeable.get(piece) else { return };
                let p = &self.pieces[id as usize];
                agenda.push(SymbolPair { score: p.score, left, right, size: piece.len() });
                if p.kind == PieceType::Unused {
                    rev_merge.insert(piece, (text(l), text(r)));
                }
            };
        for i in 1..symbols.len() {
            maybe_add(&symbols, &mut agenda, Some(i - 1), Some(i));
        }
        while let Some(top) = agenda.pop() {
            let (l, r) = (symbols[top.left], symbols[top.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != top.size {
                continue; // no longer available
            }
            symbols[top.left].len += r.len;
            symbols[top.left].next = r.next;
            if let Some(next) = r.next {
                symbols[next].prev = Some(top.left);
            }
            symbols[top.right].len = 0;
            let prev = symbols[top.left].prev;
            maybe_add(&symbols, &mut agenda, prev, Some(top.left));
            let next = symbols[top.left].next;
            maybe_add(&symbols, &mut agenda, Some(top.left), next);
        }

        let mut out = Vec::new();
        let mut index = Some(0);
        while let Some(i) = index {
            self.resegment(text(&symbols[i]), &rev_merge, &mut out);
            index = symbols[i].next;
        }
        out
    }

    /// Splits a piece of type UNUSED back into the pieces it was merged from.
    fn resegment<'a>(
        &self,
        w: &'a str,
        rev_merge: &HashMap<&'a str, (&'a str, &'a str)>,
        out: &mut Vec<(&'a str, u32)>,
    ) {
        let id = self.piece_to_id(w);
        if self.kind(id) == Some(PieceType::Unused)
            && let Some(&(left, right)) = rev_merge.get(w)
        {
            self.resegment(left, rev_merge, out);
            self.resegment(right, rev_merge, out);
            return;
        }
        out.push((w, id));
    }

    /// `SentencePieceProcessor::Encode`: normalize, BPE, then unknown pieces as byte pieces
    /// (byte fallback) or merged into runs.
    pub fn encode(&self, text: &str) -> Vec<EncodedPiece> {
        let normalized = self.normalize(text);
        let mut out: Vec<EncodedPiece> = Vec::new();
        let mut is_prev_unk = false;
        for (w, id) in self.bpe(&normalized) {
            let is_unk = self.kind(id) == Some(PieceType::Unknown);
            if is_unk && self.byte_fallback {
                for &b in w.as_bytes() {
                    let piece = byte_piece(b);
                    let id = self.piece_to_id(&piece);
                    out.push(EncodedPiece { piece, id });
                }
            } else if is_unk
                && is_prev_unk
                && let Some(last) = out.last_mut()
            {
                last.piece.push_str(w);
            } else {
                out.push(EncodedPiece { piece: w.to_owned(), id });
            }
            is_prev_unk = is_unk;
        }
        out
    }

    pub fn encode_ids(&self, text: &str) -> Vec<u32> {
        self.encode(text).into_iter().map(|p| p.id).collect()
    }

    pub fn encode_pieces(&self, text: &str) -> Vec<String> {
        self.encode(text).into_iter().map(|p| p.piece).collect()
    }

    /// `SentencePieceProcessor::Decode` on pieces (each looked up with [`Self::piece_to_id`]).
    pub fn decode_pieces<S: AsRef<str>>(&self, pieces: &[S]) -> String {
        let strip_bos_ws = self.normalizer.add_dummy_prefix || self.normalizer.remove_extra_whitespaces;
        let mut text = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut is_bos_ws = true;
        let mut bos_ws_seen = false;
        for piece in pieces {
            let piece = piece.as_ref();
            let id = self.piece_to_id(piece);
            let kind = self.kind(id);
            if kind == Some(PieceType::Byte) {
                bytes.extend(piece_to_byte(piece));
                continue;
            }
            push_bytes_lossy_like_sentencepiece(&bytes, &mut text);
            bytes.clear();
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            bos_ws_seen = false;
            match kind {
                Some(PieceType::Control) => {}
                Some(PieceType::Unknown) => {
                    if self.id_to_piece(id) == Some(piece) {
                        text.push_str(&self.unk_surface);
                    } else {
                        text.push_str(piece);
                    }
                }
                _ => {
                    let mut p = piece;
                    if is_bos_ws
                        && strip_bos_ws
                        && let Some(rest) = p.strip_prefix(SPACE_SYMBOL)
                    {
                        p = rest;
                        bos_ws_seen = !self.normalizer.remove_extra_whitespaces;
                    }
                    text.push_str(&p.replace(SPACE_CHAR, " "));
                }
            }
        }
        push_bytes_lossy_like_sentencepiece(&bytes, &mut text);
        text
    }

    /// `SentencePieceProcessor::DecodeIds`.
    pub fn decode_ids(&self, ids: &[u32]) -> Result<String, SentencePieceError> {
        let pieces = ids.iter().map(|&id| self.checked_piece(id)).collect::<Result<Vec<_>, _>>()?;
        Ok(self.decode_pieces(&pieces))
    }

    fn checked_piece(&self, id: u32) -> Result<&str, SentencePieceError> {
        self.id_to_piece(id).ok_or_else(|| SentencePieceError::IdOutOfRange {
            path: self.source.clone(),
            id,
            vocab_size: self.vocab_size(),
        })
    }
}

/// Reads a `.model` file into its protobuf.
pub fn read_model_proto(path: &Path) -> Result<proto::ModelProto, SentencePieceError> {
    let bytes =
        crate::fsread::read_small(path).map_err(|e| SentencePieceError::Read { path: path.to_owned(), source: e })?;
    proto::ModelProto::decode(bytes.as_slice())
        .map_err(|e| SentencePieceError::Protobuf { path: path.to_owned(), source: e })
}

/// transformers' (4.37.2) slow `LlamaTokenizer(legacy=False)` on a SentencePiece model, as the
/// original LLaVA code base loads it.
#[derive(Clone, Debug)]
pub struct SlowLlamaTokenizer {
    /// The model with `add_dummy_prefix` switched off.
    sp: SentencePieceModel,
    /// `all_special_tokens` (bos, eos, unk) and their ids; the strings the added-token trie
    /// splits out of text.
    specials: Vec<(String, u32)>,
    bos_id: u32,
    eos_id: u32,
    unk_token: String,
    unk_token_length: usize,
}

/// Llama's special tokens (transformers' `LlamaTokenizer` defaults).
pub const LLAMA_BOS: &str = "<s>";
pub const LLAMA_EOS: &str = "</s>";
pub const LLAMA_UNK: &str = "<unk>";

impl SlowLlamaTokenizer {
    /// Loads `tokenizer.model` the way `LlamaTokenizer.get_spm_processor` does for
    /// `legacy=False`: `normalizer_spec.add_dummy_prefix` switched off.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SentencePieceError> {
        let path = path.as_ref();
        Self::from_proto(read_model_proto(path)?, path)
    }

    pub fn from_proto(mut proto: proto::ModelProto, source: impl Into<PathBuf>) -> Result<Self, SentencePieceError> {
        proto.normalizer_spec.get_or_insert_with(Default::default).add_dummy_prefix = Some(false);
        let sp = SentencePieceModel::from_proto(proto, source)?;
        let special = |s: &str| {
            let id = sp.piece_to_id(s);
            if sp.id_to_piece(id) == Some(s) {
                Ok((s.to_owned(), id))
            } else {
                Err(SentencePieceError::Invalid {
                    path: sp.source.clone(),
                    reason: format!("no piece {s:?} for the Llama special token"),
                })
            }
        };
        let specials = vec![special(LLAMA_BOS)?, special(LLAMA_EOS)?, special(LLAMA_UNK)?];
        let (bos_id, eos_id) = (specials[0].1, specials[1].1);
        let unk_token_length = sp.encode(LLAMA_UNK).len();
        Ok(Self { sp, specials, bos_id, eos_id, unk_token: LLAMA_UNK.to_owned(), unk_token_length })
    }

    /// The underlying model (with `add_dummy_prefix` off).
    pub fn sentencepiece(&self) -> &SentencePieceModel {
        &self.sp
    }

    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn unk_id(&self) -> u32 {
        self.specials[2].1
    }

    pub fn vocab_size(&self) -> usize {
        self.sp.vocab_size()
    }

    fn special_id(&self, token: &str) -> Option<u32> {
        self.specials.iter().find(|(s, _)| s == token).map(|&(_, id)| id)
    }

    fn is_special_id(&self, id: u32) -> bool {
        self.specials.iter().any(|&(_, s)| s == id)
    }

    /// The added-token trie's split: special-token strings cut out (leftmost, longest), the text
    /// between them kept, empty pieces dropped. `true` marks a special token.
    fn split_on_specials<'a>(&self, text: &'a str) -> Vec<(&'a str, bool)> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < text.len() {
            let found =
                self.specials.iter().filter(|(s, _)| text[i..].starts_with(s.as_str())).map(|(s, _)| s.len()).max();
            if let Some(n) = found {
                if i > start {
                    out.push((&text[start..i], false));
                }
                out.push((&text[i..i + n], true));
                i += n;
                start = i;
            } else {
                i += text[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            out.push((&text[start..], false));
        }
        out
    }

    /// `LlamaTokenizer._tokenize` for `legacy=False`.
    fn tokenize_chunk(&self, chunk: &str) -> Vec<String> {
        if !chunk.starts_with([SPACE_CHAR, ' ']) {
            return self.sp.encode_pieces(chunk);
        }
        let pieces = self.sp.encode_pieces(&format!("{}{chunk}", self.unk_token));
        if pieces.len() >= self.unk_token_length { pieces[self.unk_token_length..].to_vec() } else { pieces }
    }

    /// `LlamaTokenizer.tokenize` for `legacy=False`: pieces and special-token strings.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        if text.is_empty() {
            return Vec::new();
        }
        let text = format!("{SPACE_SYMBOL}{}", text.replace(SPACE_CHAR, " "));
        let mut tokens = Vec::new();
        for (chunk, special) in self.split_on_specials(&text) {
            if special {
                tokens.push(chunk.to_owned());
            } else {
                tokens.extend(self.tokenize_chunk(chunk));
            }
        }
        if tokens.len() > 1 && tokens[0] == SPACE_SYMBOL && self.special_id(&tokens[1]).is_some() {
            tokens.remove(0);
        }
        tokens
    }

    /// `tokenizer(text).input_ids`: BOS (when `add_bos`) and the ids of [`Self::tokenize`].
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        let tokens = self.tokenize(text);
        let mut ids = Vec::with_capacity(tokens.len() + 1);
        if add_bos {
            ids.push(self.bos_id);
        }
        ids.extend(tokens.iter().map(|t| self.special_id(t).unwrap_or_else(|| self.sp.piece_to_id(t))));
        ids
    }

    /// `tokenizer.decode(ids, skip_special_tokens)` (no clean-up of tokenization spaces, as the
    /// checkpoint's `clean_up_tokenization_spaces: false` says).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, SentencePieceError> {
        let mut tokens: Vec<&str> = Vec::with_capacity(ids.len());
        for &id in ids {
            if self.is_special_id(id) {
                if !skip_special_tokens {
                    tokens.extend(self.specials.iter().find(|&&(_, s)| s == id).map(|(s, _)| s.as_str()));
                }
            } else {
                tokens.push(self.sp.checked_piece(id)?);
            }
        }
        if tokens.is_empty() {
            return Ok(String::new());
        }
        Ok(self.convert_tokens_to_string(tokens))
    }

    /// `LlamaTokenizer.convert_tokens_to_string` of transformers 4.37.2 (`legacy=False`): the
    /// first token's leading `▁` removed, special tokens written as they are, the pieces between
    /// them decoded by the model. (transformers 4.38+ also puts a space after a leading special
    /// token when the next piece has no `▁`; that only shows with `skip_special_tokens=False`.)
    fn convert_tokens_to_string(&self, mut tokens: Vec<&str>) -> String {
        if let Some(rest) = tokens[0].strip_prefix(SPACE_SYMBOL) {
            tokens[0] = rest;
        }
        let mut out = String::new();
        let mut current: Vec<&str> = Vec::new();
        for token in tokens {
            if self.special_id(token).is_some() {
                out.push_str(&self.sp.decode_pieces(&current));
                out.push_str(token);
                current.clear();
            } else {
                current.push(token);
            }
        }
        out.push_str(&self.sp.decode_pieces(&current));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::fixtures;
    use serde_json::Value;

    fn model_path() -> PathBuf {
        fixtures().join("checkpoints/llava_original/tokenizer.model")
    }

    fn vectors() -> Value {
        let path = fixtures().join("golden/llava_original/tokenizer_vectors.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("tokenizer_vectors.json parses")
    }

    fn u32s(v: &Value) -> Vec<u32> {
        v.as_array().expect("a list of ids").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array().expect("a list of strings").iter().map(|x| x.as_str().expect("a string").to_owned()).collect()
    }

    fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
        v[key].as_str().unwrap_or_else(|| panic!("{key} is a string in {v}"))
    }

    fn records<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
        v[key].as_array().unwrap_or_else(|| panic!("{key} is a list"))
    }

    /// The fixture model, edited like the generator's `variant_processor`; also returns a label.
    fn variant(var: &Value) -> (SentencePieceModel, String) {
        let flag = |k: &str| var[k].as_bool().unwrap_or_else(|| panic!("{k} is a bool"));
        let user_defined = strings(&var["user_defined"]);
        let unused = u32s(&var["unused"]);
        let extra_normal: Vec<(String, f32)> = var["extra_normal"]
            .as_array()
            .expect("extra_normal is a list")
            .iter()
            .map(|p| (p[0].as_str().expect("a piece").to_owned(), p[1].as_f64().expect("a score") as f32))
            .collect();
        let mut proto = read_model_proto(&model_path()).expect("the fixture model loads");
        for (piece, score) in &extra_normal {
            proto.pieces.push(proto::SentencePiece {
                piece: Some(piece.clone()),
                score: Some(*score),
                r#type: Some(PieceType::Normal as i32),
            });
        }
        for piece in &user_defined {
            proto.pieces.push(proto::SentencePiece {
                piece: Some(piece.clone()),
                score: Some(0.0),
                r#type: Some(PieceType::UserDefined as i32),
            });
        }
        for &i in &unused {
            proto.pieces[i as usize].set_type(PieceType::Unused);
        }
        let spec = proto.normalizer_spec.get_or_insert_with(Default::default);
        spec.add_dummy_prefix = Some(flag("add_dummy_prefix"));
        spec.remove_extra_whitespaces = Some(flag("remove_extra_whitespaces"));
        if !flag("byte_fallback") {
            proto.trainer_spec.get_or_insert_with(Default::default).byte_fallback = Some(false);
            for p in &mut proto.pieces {
                if p.r#type() == PieceType::Byte {
                    p.set_type(PieceType::Control);
                }
            }
        }
        let label = format!(
            "add_dummy_prefix={} remove_extra_whitespaces={} byte_fallback={} user_defined={user_defined:?} unused={unused:?} extra_normal={extra_normal:?}",
            flag("add_dummy_prefix"),
            flag("remove_extra_whitespaces"),
            flag("byte_fallback")
        );
        (SentencePieceModel::from_proto(proto, model_path()).expect("the variant loads"), label)
    }

    #[test]
    fn the_fixture_model_is_a_llama_style_byte_fallback_bpe_model() {
        let sp = SentencePieceModel::from_file(model_path()).expect("the fixture model loads");
        assert_eq!(sp.vocab_size(), 420);
        assert!(sp.byte_fallback());
        assert_eq!(
            sp.normalizer(),
            &NormalizerSettings {
                name: "identity".into(),
                add_dummy_prefix: true,
                remove_extra_whitespaces: false,
                escape_whitespaces: true,
            }
        );
        assert_eq!((sp.unk_id(), sp.piece_to_id("<s>"), sp.piece_to_id("</s>")), (0, 1, 2));
        assert_eq!(sp.piece(3).map(|p| (p.piece.as_str(), p.kind)), Some(("<0x00>", PieceType::Byte)));
        assert_eq!(sp.piece_to_id("<0x0A>"), 13);
        assert_eq!(sp.piece_to_id("no such piece"), 0);
    }

    #[test]
    fn sentencepiece_encodes_like_the_library_under_every_normalizer_and_vocabulary_variant() {
        let v = vectors();
        let variants = records(&v, "sentencepiece");
        assert_eq!(variants.len(), 10);
        for var in variants {
            let (sp, label) = variant(var);
            for case in records(var, "encode") {
                let text = str_of(case, "text");
                let got = sp.encode(text);
                let pieces: Vec<String> = got.iter().map(|p| p.piece.clone()).collect();
                let ids: Vec<u32> = got.iter().map(|p| p.id).collect();
                assert_eq!(pieces, strings(&case["pieces"]), "pieces of {text:?} with {label}");
                assert_eq!(ids, u32s(&case["ids"]), "ids of {text:?} with {label}");
            }
        }
    }

    #[test]
    fn sentencepiece_decodes_ids_and_pieces_like_the_library_under_every_variant() {
        let v = vectors();
        for var in records(&v, "sentencepiece") {
            let (sp, label) = variant(var);
            for case in records(var, "decode_ids") {
                let ids = u32s(&case["ids"]);
                let got = sp.decode_ids(&ids).expect("ids are in range");
                assert_eq!(got, str_of(case, "text"), "decode of {ids:?} with {label}");
            }
            for case in records(var, "decode_pieces") {
                let pieces = strings(&case["pieces"]);
                assert_eq!(sp.decode_pieces(&pieces), str_of(case, "text"), "decode of {pieces:?} with {label}");
            }
        }
    }

    #[test]
    fn invalid_utf8_from_byte_pieces_becomes_one_replacement_character_per_byte() {
        let sp = SentencePieceModel::from_file(model_path()).expect("the fixture model loads");
        let bytes = |b: &[u8]| b.iter().map(|&x| u32::from(x) + 3).collect::<Vec<_>>();
        assert_eq!(sp.decode_ids(&bytes(&[0xE7, 0x8C, 0xAB])).expect("decodes"), "猫");
        assert_eq!(sp.decode_ids(&bytes(&[0xE7, 0x8C])).expect("decodes"), "\u{FFFD}\u{FFFD}");
        assert_eq!(sp.decode_ids(&bytes(&[0xED, 0xA0, 0x80])).expect("decodes"), "\u{FFFD}".repeat(3));
    }

    #[test]
    fn slow_llama_tokenizer_tokenizes_and_encodes_like_transformers_legacy_false() {
        let tok = SlowLlamaTokenizer::from_file(model_path()).expect("the fixture model loads");
        let v = vectors();
        let cases = records(&v, "llama_encode");
        assert!(cases.len() >= 30);
        for case in cases {
            let text = str_of(case, "text");
            assert_eq!(tok.tokenize(text), strings(&case["tokens"]), "tokens of {text:?}");
            assert_eq!(tok.encode(text, true), u32s(&case["ids"]), "ids of {text:?}");
            assert_eq!(tok.encode(text, false), u32s(&case["ids"])[1..], "ids without BOS of {text:?}");
        }
    }

    #[test]
    fn slow_llama_tokenizer_decodes_like_transformers_with_and_without_special_tokens() {
        let tok = SlowLlamaTokenizer::from_file(model_path()).expect("the fixture model loads");
        let v = vectors();
        for case in records(&v, "llama_decode") {
            let ids = u32s(&case["ids"]);
            let skip = case["skip_special_tokens"].as_bool().expect("a bool");
            let got = tok.decode(&ids, skip).expect("ids are in range");
            assert_eq!(got, str_of(case, "text"), "decode of {ids:?}, skip_special_tokens={skip}");
        }
    }

    #[test]
    fn special_token_strings_in_text_become_their_ids() {
        let tok = SlowLlamaTokenizer::from_file(model_path()).expect("the fixture model loads");
        assert_eq!(tok.encode("<s></s><unk>", false), [1, 2, 0]);
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.unk_id()), (1, 2, 0));
    }

    #[test]
    fn an_id_outside_the_vocabulary_is_an_error_naming_the_file() {
        let tok = SlowLlamaTokenizer::from_file(model_path()).expect("the fixture model loads");
        let err = tok.decode(&[5, 420], true).expect_err("420 is out of range");
        let msg = err.to_string();
        assert!(msg.contains("420") && msg.contains("tokenizer.model"), "{msg}");
    }

    #[test]
    fn a_missing_or_corrupt_model_file_is_an_error_naming_it() {
        let missing = fixtures().join("checkpoints/llava_original/no_such.model");
        let err = SentencePieceModel::from_file(&missing).expect_err("the file does not exist");
        assert!(matches!(err, SentencePieceError::Read { .. }) && err.to_string().contains("no_such.model"));
        let corrupt = SentencePieceModel::from_bytes(b"\x0a\xff\xff\xff", "corrupt.model").expect_err("not a model");
        assert!(
            matches!(corrupt, SentencePieceError::Protobuf { .. }) && corrupt.to_string().contains("corrupt.model")
        );
    }

    #[test]
    fn unigram_models_and_character_maps_are_refused_not_approximated() {
        let mut proto = read_model_proto(&model_path()).expect("the fixture model loads");
        proto.trainer_spec.get_or_insert_with(Default::default).set_model_type(ModelType::Unigram);
        let err = SentencePieceModel::from_proto(proto, "unigram.model").expect_err("unigram is not implemented");
        assert!(matches!(err, SentencePieceError::Unsupported { .. }), "{err}");

        let mut proto = read_model_proto(&model_path()).expect("the fixture model loads");
        proto.normalizer_spec.get_or_insert_with(Default::default).precompiled_charsmap = Some(vec![1, 2, 3, 4, 5]);
        let err = SentencePieceModel::from_proto(proto, "nfkc.model").expect_err("charsmaps are not implemented");
        assert!(matches!(err, SentencePieceError::Unsupported { .. }), "{err}");
    }
}
