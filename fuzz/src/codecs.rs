//! The codecs and types of the `codec_decode` target, and a valid sample
//! frame for each case (the seed corpus).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use chitchat_net::codec::{SerdeFormat, Tagged, TaggedEnum, UnknownTag};
use chitchat_net::heartbeat::{Beat, Register};
use chitchat_net::{Bincode, BincodeWithLimit, Codec, Error, PodCodec, Postcard, Raw, Text};
use serde::{Deserialize, Serialize};

/// A `#[repr(C)]` plain-old-data struct without padding, 32 bytes, align 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Record {
    pub id: u32,
    pub flags: u16,
    pub kind: u8,
    pub level: u8,
    pub bytes: [u8; 8],
    pub total: u64,
    pub history: [i16; 4],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Empty,
    Code(u16),
    Named { name: String, tags: Vec<String> },
    Pair(i32, Option<i64>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    pub key: String,
    pub weight: i16,
}

/// A nested serde type: options, an enum, maps, nested sequences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nested {
    pub id: u32,
    pub name: Option<String>,
    pub kind: Kind,
    pub attrs: HashMap<String, i64>,
    pub blobs: Vec<Vec<u8>>,
    pub leaves: Vec<Leaf>,
    pub index: BTreeMap<u8, Kind>,
    pub flag: bool,
    pub small: i8,
    pub wide: u128,
    pub letter: char,
    pub unit: (),
    pub pair: (u16, Option<u8>),
}

/// A recursive type: the serde guard's depth limit (128 levels) must stop
/// a deep frame before the stack overflows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tree {
    Leaf(u8),
    Node(Box<Tree>),
    Pair(Box<Tree>, Option<Box<Tree>>),
}

impl Tree {
    /// Nesting levels, as the guard counts them at most.
    pub fn depth(&self) -> usize {
        match self {
            Tree::Leaf(_) => 1,
            Tree::Node(inner) => 1 + inner.depth(),
            Tree::Pair(a, b) => 1 + a.depth().max(b.as_ref().map_or(0, |b| 1 + b.depth())),
        }
    }
}

/// Every string, byte array, sequence and map length is at most `n`.
pub trait Within {
    /// Whether every length is at most `n`.
    fn within(&self, n: usize) -> bool;
}

impl Within for String {
    fn within(&self, n: usize) -> bool {
        self.len() <= n
    }
}

impl Within for Vec<u8> {
    fn within(&self, n: usize) -> bool {
        self.len() <= n
    }
}

impl Within for Vec<u64> {
    fn within(&self, n: usize) -> bool {
        self.len() <= n
    }
}

impl Within for Vec<String> {
    fn within(&self, n: usize) -> bool {
        self.len() <= n && self.iter().all(|s| s.within(n))
    }
}

impl Within for Kind {
    fn within(&self, n: usize) -> bool {
        match self {
            Kind::Named { name, tags } => name.within(n) && tags.within(n),
            _ => true,
        }
    }
}

impl Within for Nested {
    fn within(&self, n: usize) -> bool {
        self.name.as_ref().is_none_or(|s| s.within(n))
            && self.kind.within(n)
            && self.attrs.len() <= n
            && self.attrs.keys().all(|k| k.within(n))
            && self.blobs.len() <= n
            && self.blobs.iter().all(|b| b.within(n))
            && self.leaves.len() <= n
            && self.leaves.iter().all(|l| l.key.within(n))
            && self.index.len() <= n
            && self.index.values().all(|k| k.within(n))
    }
}

impl Within for Cmd {
    fn within(&self, n: usize) -> bool {
        match self {
            Cmd::Put { key, value } => key.within(n) && value.within(n),
            Cmd::Batch(items) => items.len() <= n && items.iter().all(|(_, s)| s.within(n)),
            Cmd::Nop | Cmd::Del(_) => true,
        }
    }
}

/// A hand-written `TaggedEnum` with pinned, sparse tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Nop,
    Put { key: String, value: Vec<u8> },
    Del(u64),
    Batch(Vec<(u32, String)>),
}

impl TaggedEnum for Cmd {
    fn tag(&self) -> u32 {
        match self {
            Cmd::Nop => 0,
            Cmd::Put { .. } => 7,
            Cmd::Del(_) => 42,
            Cmd::Batch(_) => u32::MAX,
        }
    }

    fn encode_fields<F: SerdeFormat>(&self, format: &F, dst: &mut BytesMut) -> Result<(), Error> {
        match self {
            Cmd::Nop => format.encode_value(&(), dst),
            Cmd::Put { key, value } => format.encode_value(&(key, value), dst),
            Cmd::Del(id) => format.encode_value(&(id,), dst),
            Cmd::Batch(items) => format.encode_value(&(items,), dst),
        }
    }

    fn decode_fields<F: SerdeFormat>(
        format: &F,
        tag: u32,
        bytes: &[u8],
    ) -> Result<(Self, usize), Error> {
        Ok(match tag {
            0 => {
                let ((), used) = format.decode_prefix::<()>(bytes)?;
                (Cmd::Nop, used)
            }
            7 => {
                let ((key, value), used) = format.decode_prefix(bytes)?;
                (Cmd::Put { key, value }, used)
            }
            42 => {
                let ((id,), used) = format.decode_prefix(bytes)?;
                (Cmd::Del(id), used)
            }
            u32::MAX => {
                let ((items,), used) = format.decode_prefix(bytes)?;
                (Cmd::Batch(items), used)
            }
            tag => return Err(Error::decode(format.name(), UnknownTag { tag })),
        })
    }
}

/// What to check beyond the round trip.
#[derive(Clone, Copy)]
struct Opts {
    /// The value re-encodes to the very frame.
    exact: bool,
    /// Encoding the same value twice gives the same bytes (not with a
    /// `HashMap`, whose order is random per map).
    deterministic: bool,
}

const EXACT: Opts = Opts {
    exact: true,
    deterministic: true,
};
const SERDE: Opts = Opts {
    exact: false,
    deterministic: true,
};
const UNORDERED: Opts = Opts {
    exact: false,
    deterministic: false,
};

fn check<T, C>(codec: C, frame: &Bytes, opts: Opts) -> Option<T>
where
    C: Codec<T>,
    T: PartialEq + Debug,
{
    let value = codec.decode(frame.clone()).ok()?;
    let mut first = BytesMut::new();
    codec
        .encode(&value, &mut first)
        .unwrap_or_else(|e| panic!("{}: re-encoding {value:?}: {e:?}", codec.name()));
    if opts.exact {
        assert_eq!(&first[..], &frame[..], "{}: {value:?}", codec.name());
    }
    let first = first.freeze();
    let again = codec.decode(first.clone()).unwrap_or_else(|e| {
        panic!(
            "{}: decoding the re-encoded {value:?} ({first:?}): {e:?}",
            codec.name()
        )
    });
    assert_eq!(again, value, "{}: encoding {first:?}", codec.name());
    if opts.deterministic {
        let mut second = BytesMut::new();
        codec.encode(&again, &mut second).unwrap();
        assert_eq!(second, first, "{}: {value:?}", codec.name());
    }
    Some(value)
}

fn limited<T: Within + Debug>(value: Option<T>) -> bool {
    if let Some(value) = &value {
        assert!(value.within(64), "bincode limit 64 let through {value:?}");
    }
    value.is_some()
}

fn shallow(value: Option<Tree>) -> bool {
    if let Some(tree) = &value {
        let depth = tree.depth();
        assert!(depth <= 128, "the depth limit let through {depth} levels");
    }
    value.is_some()
}

fn decoded<T>(value: Option<T>) -> bool {
    value.is_some()
}

/// The case names, by selector (the selector byte modulo their number).
pub const CASES: &[&str] = &[
    "text/String",
    "raw/Bytes",
    "raw/Vec<u8>",
    "pod/u8",
    "pod/u64",
    "pod/[u32; 3]",
    "pod/Record",
    "pod/[u8; 0]",
    "bincode/String",
    "bincode/Vec<u64>",
    "bincode/Vec<String>",
    "bincode/Nested",
    "bincode/Register",
    "bincode/(u32, i64, bool, char, Option<u16>)",
    "bincode64/String",
    "bincode64/Vec<u64>",
    "bincode64/Nested",
    "postcard/String",
    "postcard/Vec<u64>",
    "postcard/Vec<String>",
    "postcard/Nested",
    "postcard/Register",
    "postcard/(u32, i64, bool, char, Option<u16>)",
    "tagged-bincode/Beat",
    "tagged-bincode/Cmd",
    "tagged-postcard/Beat",
    "tagged-postcard/Cmd",
    "tagged-bincode64/Cmd",
    "bincode/Tree",
    "postcard/Tree",
];

pub type Tuple = (u32, i64, bool, char, Option<u16>);

/// Decodes `frame` with the codec and type of case `selector % CASES.len()`
/// and checks what the target checks; returns whether it decoded.
pub fn run(selector: u8, frame: &Bytes) -> bool {
    match usize::from(selector) % CASES.len() {
        0 => decoded(check::<String, _>(Text, frame, EXACT)),
        1 => decoded(check::<Bytes, _>(Raw, frame, EXACT)),
        2 => decoded(check::<Vec<u8>, _>(Raw, frame, EXACT)),
        3 => decoded(check::<u8, _>(PodCodec, frame, EXACT)),
        4 => decoded(check::<u64, _>(PodCodec, frame, EXACT)),
        5 => decoded(check::<[u32; 3], _>(PodCodec, frame, EXACT)),
        6 => decoded(check::<Record, _>(PodCodec, frame, EXACT)),
        7 => decoded(check::<[u8; 0], _>(PodCodec, frame, EXACT)),
        8 => decoded(check::<String, _>(Bincode, frame, SERDE)),
        9 => decoded(check::<Vec<u64>, _>(Bincode, frame, SERDE)),
        10 => decoded(check::<Vec<String>, _>(Bincode, frame, SERDE)),
        11 => decoded(check::<Nested, _>(Bincode, frame, UNORDERED)),
        12 => decoded(check::<Register, _>(Bincode, frame, SERDE)),
        13 => decoded(check::<Tuple, _>(Bincode, frame, SERDE)),
        14 => limited(check::<String, _>(BincodeWithLimit::<64>, frame, SERDE)),
        15 => limited(check::<Vec<u64>, _>(BincodeWithLimit::<64>, frame, SERDE)),
        16 => limited(check::<Nested, _>(BincodeWithLimit::<64>, frame, UNORDERED)),
        17 => decoded(check::<String, _>(Postcard, frame, SERDE)),
        18 => decoded(check::<Vec<u64>, _>(Postcard, frame, SERDE)),
        19 => decoded(check::<Vec<String>, _>(Postcard, frame, SERDE)),
        20 => decoded(check::<Nested, _>(Postcard, frame, UNORDERED)),
        21 => decoded(check::<Register, _>(Postcard, frame, SERDE)),
        22 => decoded(check::<Tuple, _>(Postcard, frame, SERDE)),
        23 => decoded(check::<Beat, _>(Tagged::<Bincode>::default(), frame, SERDE)),
        24 => decoded(check::<Cmd, _>(Tagged::<Bincode>::default(), frame, SERDE)),
        25 => decoded(check::<Beat, _>(
            Tagged::<Postcard>::default(),
            frame,
            SERDE,
        )),
        26 => decoded(check::<Cmd, _>(Tagged::<Postcard>::default(), frame, SERDE)),
        27 => limited(check::<Cmd, _>(
            Tagged::<BincodeWithLimit<64>>::default(),
            frame,
            SERDE,
        )),
        28 => shallow(check::<Tree, _>(Bincode, frame, SERDE)),
        29 => shallow(check::<Tree, _>(Postcard, frame, SERDE)),
        _ => unreachable!(),
    }
}

/// A valid frame for case `case` (selector byte not included), for the seed
/// corpus.
pub fn seed(case: usize) -> Bytes {
    let nested = Nested {
        id: 7,
        name: Some("node\n1".into()),
        kind: Kind::Named {
            name: "n".into(),
            tags: vec!["a".into(), "\u{ff}".into()],
        },
        attrs: HashMap::from([("k".to_string(), -1)]),
        blobs: vec![vec![0x0A, 0xFF, 0xDF, 0x00], vec![]],
        leaves: vec![Leaf {
            key: "leaf".into(),
            weight: -300,
        }],
        index: BTreeMap::from([
            (1, Kind::Code(300)),
            (2, Kind::Pair(-5, Some(i64::MIN))),
            (3, Kind::Empty),
        ]),
        flag: true,
        small: -128,
        wide: u128::MAX - 1,
        letter: '\u{1F600}',
        unit: (),
        pair: (65535, None),
    };
    let record = Record {
        id: 0x0A0A_FF0A,
        flags: 0xFEDF,
        kind: b'\n',
        level: 0xFF,
        bytes: *b"chitchat",
        total: u64::MAX,
        history: [-1, 0, 10, i16::MAX],
    };
    let register = Register {
        name: "node".into(),
        addr: "127.0.0.1:9000".parse().unwrap(),
    };
    let tuple: Tuple = (251, -65536, true, 'é', Some(256));
    let strings = vec!["one".to_string(), String::new(), "thr\u{e9}e".into()];
    let numbers = vec![0, 250, 251, 65535, 65536, u64::MAX];
    let cmd = Cmd::Put {
        key: "key".into(),
        value: vec![1, 2, 3],
    };
    let batch = Cmd::Batch(vec![(1, "a".into()), (u32::MAX, "b".into())]);
    let beat = Beat::Pong { seq: 300 };
    let tree = Tree::Pair(
        Box::new(Tree::Node(Box::new(Tree::Leaf(10)))),
        Some(Box::new(Tree::Leaf(255))),
    );
    let mut buf = BytesMut::new();
    let text = "héllo\r\nworld".to_string();
    let raw = Bytes::from_static(b"\x00\x0A\xFF\xDF\r");
    let result = match case {
        0 => Text.encode(&text, &mut buf),
        1 => Raw.encode(&raw, &mut buf),
        2 => Raw.encode(&raw.to_vec(), &mut buf),
        3 => PodCodec.encode(&0xFFu8, &mut buf),
        4 => PodCodec.encode(&0x0A00_FFDF_0000_0001u64, &mut buf),
        5 => PodCodec.encode(&[1u32, 0x0A0A_0A0A, u32::MAX], &mut buf),
        6 => PodCodec.encode(&record, &mut buf),
        7 => PodCodec.encode(&[0u8; 0], &mut buf),
        8 => Bincode.encode(&text, &mut buf),
        9 => Bincode.encode(&numbers, &mut buf),
        10 => Bincode.encode(&strings, &mut buf),
        11 => Bincode.encode(&nested, &mut buf),
        12 => Bincode.encode(&register, &mut buf),
        13 => Bincode.encode(&tuple, &mut buf),
        14 => BincodeWithLimit::<64>.encode(&text, &mut buf),
        15 => BincodeWithLimit::<64>.encode(&numbers, &mut buf),
        16 => BincodeWithLimit::<64>.encode(&nested, &mut buf),
        17 => Postcard.encode(&text, &mut buf),
        18 => Postcard.encode(&numbers, &mut buf),
        19 => Postcard.encode(&strings, &mut buf),
        20 => Postcard.encode(&nested, &mut buf),
        21 => Postcard.encode(&register, &mut buf),
        22 => Postcard.encode(&tuple, &mut buf),
        23 => Tagged::<Bincode>::default().encode(&beat, &mut buf),
        24 => Tagged::<Bincode>::default().encode(&cmd, &mut buf),
        25 => Tagged::<Postcard>::default().encode(&beat, &mut buf),
        26 => Tagged::<Postcard>::default().encode(&batch, &mut buf),
        27 => Tagged::<BincodeWithLimit<64>>::default().encode(&batch, &mut buf),
        28 => Bincode.encode(&tree, &mut buf),
        29 => Postcard.encode(&tree, &mut buf),
        _ => panic!("no case {case}"),
    };
    result.expect("seed value encodes");
    buf.freeze()
}
