//! The SentencePiece model file (`.model`, Marian's `.spm`): a protobuf `ModelProto`
//! (sentencepiece_model.proto), read with a small wire-format reader of our own, so
//! neither protoc nor the C++ library is needed. Only the fields tokenization uses are
//! kept; every other field is skipped by its wire type, as protobuf readers do.

use std::path::Path;

use crate::error::{Error, Result};

/// `ModelProto.SentencePiece.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(v: u64) -> Option<PieceType> {
        Some(match v {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// `NormalizerSpec`, with the proto's defaults.
#[derive(Clone, Debug)]
pub struct NormalizerSpec {
    pub name: String,
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        NormalizerSpec {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// The `TrainerSpec` fields that matter when encoding and decoding, with the proto's
/// defaults. `model_type`: 1 Unigram, 2 BPE, 3 word, 4 char.
#[derive(Clone, Debug)]
pub struct TrainerSpec {
    pub model_type: u64,
    pub byte_fallback: bool,
    pub treat_whitespace_as_suffix: bool,
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
    pub unk_piece: String,
    pub unk_surface: String,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        TrainerSpec {
            model_type: 1,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            unk_piece: "<unk>".into(),
            unk_surface: " \u{2047} ".into(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ModelProto {
    pub pieces: Vec<Piece>,
    pub trainer: TrainerSpec,
    pub normalizer: NormalizerSpec,
    /// `denormalizer_spec` as the file has it (None when absent).
    pub denormalizer: Option<NormalizerSpec>,
}

/// One protobuf field: its number and value. Fixed64 values are skipped by the caller.
enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

/// A protobuf message's bytes, read field by field. `base` is the offset of `buf` in the
/// file, so errors say where the file is broken.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn at(&self) -> usize {
        self.base + self.pos
    }

    fn varint(&mut self) -> Parsed<u64> {
        let start = self.at();
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(format!("a varint at byte {start} runs past the end"));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("a varint at byte {start} is longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Parsed<&'a [u8]> {
        let start = self.at();
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(format!(
                "a field of {n} bytes at byte {start} runs past the end (the file is cut short?)"
            ));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field: its number, the reader's position after it (so a nested message
    /// knows where its bytes start) and its value; None at the end of the message.
    fn field(&mut self) -> Parsed<Option<(u64, usize, Value<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key_at = self.at();
        let key = self.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        if number == 0 {
            return Err(format!("field number 0 at byte {key_at}"));
        }
        let value = match wire {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| format!("length {n} at byte {key_at}"))?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => return Err(format!("wire type {w} (field {number}) at byte {key_at}")),
        };
        Ok(Some((number, self.at(), value)))
    }
}

fn expect_varint(v: Value, name: &str) -> Parsed<u64> {
    match v {
        Value::Varint(x) => Ok(x),
        _ => Err(format!("{name} is not a varint")),
    }
}

fn expect_bytes<'a>(v: Value<'a>, name: &str) -> Parsed<&'a [u8]> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(format!("{name} is not length-delimited")),
    }
}

fn expect_string(v: Value, name: &str) -> Parsed<String> {
    let b = expect_bytes(v, name)?;
    String::from_utf8(b.to_vec()).map_err(|_| format!("{name} is not UTF-8"))
}

/// protobuf int32: a varint holding the 64-bit two's complement.
fn expect_int32(v: Value, name: &str) -> Parsed<i32> {
    Ok(expect_varint(v, name)? as i64 as i32)
}

fn expect_bool(v: Value, name: &str) -> Parsed<bool> {
    Ok(expect_varint(v, name)? != 0)
}

/// Where a length-delimited field's bytes start in the file: its end minus its length.
fn sub_base(end: usize, b: &[u8]) -> usize {
    end - b.len()
}

type Parsed<T> = std::result::Result<T, String>;

/// Call `f` with each field of the message in `buf` (at offset `base` in the file): its
/// number, the offset just past it, and its value.
fn each_field<'a>(
    buf: &'a [u8],
    base: usize,
    mut f: impl FnMut(u64, usize, Value<'a>) -> Parsed<()>,
) -> Parsed<()> {
    let mut r = Reader::new(buf, base);
    while let Some((n, end, v)) = r.field()? {
        f(n, end, v)?;
    }
    Ok(())
}

fn parse_piece(buf: &[u8], base: usize) -> Parsed<Piece> {
    let mut p = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    each_field(buf, base, |n, end, v| {
        match n {
            1 => p.piece = expect_string(v, "SentencePiece.piece")?,
            2 => match v {
                Value::Fixed32(bits) => p.score = f32::from_bits(bits),
                _ => return Err("SentencePiece.score is not a float".into()),
            },
            3 => {
                let t = expect_varint(v, "SentencePiece.type")?;
                p.kind = PieceType::from_proto(t)
                    .ok_or_else(|| format!("piece type {t} before byte {end}"))?;
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(p)
}

fn parse_trainer(buf: &[u8], base: usize) -> Parsed<TrainerSpec> {
    let mut t = TrainerSpec::default();
    each_field(buf, base, |n, _, v| {
        match n {
            3 => t.model_type = expect_varint(v, "TrainerSpec.model_type")?,
            24 => t.treat_whitespace_as_suffix = expect_bool(v, "treat_whitespace_as_suffix")?,
            35 => t.byte_fallback = expect_bool(v, "TrainerSpec.byte_fallback")?,
            40 => t.unk_id = expect_int32(v, "TrainerSpec.unk_id")?,
            41 => t.bos_id = expect_int32(v, "TrainerSpec.bos_id")?,
            42 => t.eos_id = expect_int32(v, "TrainerSpec.eos_id")?,
            43 => t.pad_id = expect_int32(v, "TrainerSpec.pad_id")?,
            44 => t.unk_surface = expect_string(v, "TrainerSpec.unk_surface")?,
            45 => t.unk_piece = expect_string(v, "TrainerSpec.unk_piece")?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(t)
}

fn parse_normalizer(buf: &[u8], base: usize) -> Parsed<NormalizerSpec> {
    let mut s = NormalizerSpec::default();
    each_field(buf, base, |n, _, v| {
        match n {
            1 => s.name = expect_string(v, "NormalizerSpec.name")?,
            2 => s.precompiled_charsmap = expect_bytes(v, "precompiled_charsmap")?.to_vec(),
            3 => s.add_dummy_prefix = expect_bool(v, "NormalizerSpec.add_dummy_prefix")?,
            4 => s.remove_extra_whitespaces = expect_bool(v, "remove_extra_whitespaces")?,
            5 => s.escape_whitespaces = expect_bool(v, "NormalizerSpec.escape_whitespaces")?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(s)
}

fn parse_model(buf: &[u8]) -> Parsed<ModelProto> {
    let mut m = ModelProto::default();
    each_field(buf, 0, |n, end, v| {
        match n {
            1 => {
                let b = expect_bytes(v, "ModelProto.pieces")?;
                m.pieces.push(parse_piece(b, sub_base(end, b))?);
            }
            2 => {
                let b = expect_bytes(v, "ModelProto.trainer_spec")?;
                m.trainer = parse_trainer(b, sub_base(end, b))?;
            }
            3 => {
                let b = expect_bytes(v, "ModelProto.normalizer_spec")?;
                m.normalizer = parse_normalizer(b, sub_base(end, b))?;
            }
            5 => {
                let b = expect_bytes(v, "ModelProto.denormalizer_spec")?;
                m.denormalizer = Some(parse_normalizer(b, sub_base(end, b))?);
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(m)
}

impl ModelProto {
    /// Parse a model file's bytes; `path` names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<ModelProto> {
        let bad = |why: String| {
            Error::msg(format!(
                "{}: not a SentencePiece model file (a protobuf ModelProto): {why}",
                path.display()
            ))
        };
        let m = parse_model(bytes).map_err(bad)?;
        if m.pieces.is_empty() {
            return Err(bad("it holds no pieces".into()));
        }
        if let Some(p) = m.pieces.iter().find(|p| p.piece.is_empty()) {
            return Err(bad(format!("an empty piece (type {:?})", p.kind)));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field_bytes(n: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn piece(s: &str, score: f32, kind: u64) -> Vec<u8> {
        let mut p = Vec::new();
        field_bytes(1, s.as_bytes(), &mut p);
        varint(2 << 3 | 5, &mut p);
        p.extend_from_slice(&score.to_le_bytes());
        varint(3 << 3, &mut p);
        varint(kind, &mut p);
        p
    }

    #[test]
    fn reads_pieces_specs_and_negative_int32() {
        let mut m = Vec::new();
        field_bytes(1, &piece("<unk>", 0.0, 2), &mut m);
        field_bytes(1, &piece("\u{2581}a", -1.5, 1), &mut m);
        let mut t = Vec::new();
        varint(43 << 3, &mut t);
        varint(-1i64 as u64, &mut t); // pad_id -1: ten bytes
        varint(35 << 3, &mut t);
        varint(1, &mut t);
        varint(99 << 3 | 1, &mut t); // an unknown fixed64 field is skipped
        t.extend_from_slice(&[0; 8]);
        field_bytes(2, &t, &mut m);
        let mut n = Vec::new();
        field_bytes(2, b"\x01\x02", &mut n);
        varint(3 << 3, &mut n);
        varint(0, &mut n);
        field_bytes(3, &n, &mut m);
        let p = ModelProto::parse(&m, Path::new("x.model")).expect("parse");
        assert_eq!(p.pieces.len(), 2);
        assert_eq!(p.pieces[1].piece, "\u{2581}a");
        assert_eq!(p.pieces[1].score, -1.5);
        assert_eq!(p.pieces[0].kind, PieceType::Unknown);
        assert_eq!(p.trainer.pad_id, -1);
        assert!(p.trainer.byte_fallback);
        assert_eq!(p.trainer.eos_id, 2, "default kept");
        assert_eq!(p.normalizer.precompiled_charsmap, vec![1, 2]);
        assert!(!p.normalizer.add_dummy_prefix);
        assert!(p.normalizer.remove_extra_whitespaces, "default kept");
        // Cut short: the error names the file and where.
        let e = ModelProto::parse(&m[..m.len() - 3], Path::new("cut.spm"))
            .expect_err("truncated")
            .to_string();
        assert!(e.contains("cut.spm") && e.contains("past the end"), "{e}");
        let e = ModelProto::parse(b"", Path::new("e.spm")).expect_err("empty");
        assert!(e.to_string().contains("no pieces"), "{e}");
    }
}
