//! Just enough of a BTF reader to find `struct sk_buff` member offsets and the
//! `enum skb_drop_reason` names of the running kernel (Rust eBPF has no CO-RE).
use std::collections::BTreeMap;

use flowpol_common::ROUTINE_REASON_WORDS;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("BTF blob is truncated or malformed: {0}")]
    Malformed(&'static str),
    #[error("BTF has no {0}")]
    Missing(String),
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// Struct or union.
    Composite {
        name: u32,
        members: Vec<Member>,
    },
    Enum {
        name: u32,
        values: Vec<(u32, i64)>,
    },
    /// typedef / const / volatile / restrict / type tag: refers to another type.
    Alias(u32),
    Other,
}

/// A parsed BTF blob (types and string section).
pub struct Btf {
    strings: Vec<u8>,
    /// Index = type id (0 is `void`).
    types: Vec<Type>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or(BtfError::Malformed("read past the end"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, super::CaptureError> {
        let path = super::preflight::VMLINUX_BTF;
        let bytes = std::fs::read(path).map_err(|e| super::CaptureError::NoBtf {
            path: path.into(),
            detail: e.to_string(),
        })?;
        Self::parse(&bytes).map_err(|e| super::CaptureError::NoBtf {
            path: path.into(),
            detail: e.to_string(),
        })
    }

    /// Parses a little-endian BTF blob as found in /sys/kernel/btf/vmlinux.
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        if b.len() < 24 {
            return Err(BtfError::Malformed("header too short"));
        }
        let magic = u16::from_le_bytes([b[0], b[1]]);
        if magic != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types_bytes = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of range"))?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of range"))?
            .to_vec();
        let mut types = vec![Type::Other];
        let mut off = 0;
        let t = types_bytes;
        while off < t.len() {
            let name = u32_at(t, off)?;
            let info = u32_at(t, off + 4)?;
            let size_or_type = u32_at(t, off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_INT => {
                    off += 4;
                    Type::Other
                }
                KIND_PTR | KIND_FWD | KIND_FUNC | KIND_FLOAT => Type::Other,
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias(size_or_type)
                }
                KIND_ARRAY => {
                    off += 12;
                    Type::Other
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = off + i * 12;
                        let raw = u32_at(t, m + 8)?;
                        members.push(Member {
                            name: u32_at(t, m)?,
                            type_id: u32_at(t, m + 4)?,
                            bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                        });
                    }
                    off += vlen * 12;
                    Type::Composite { name, members }
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let e = off + i * 8;
                        let raw = u32_at(t, e + 4)?;
                        // kind_flag set = signed values.
                        let v = if kind_flag {
                            raw as i32 as i64
                        } else {
                            raw as i64
                        };
                        values.push((u32_at(t, e)?, v));
                    }
                    off += vlen * 8;
                    Type::Enum { name, values }
                }
                KIND_ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let e = off + i * 12;
                        let lo = u32_at(t, e + 4)? as u64;
                        let hi = u32_at(t, e + 8)? as u64;
                        values.push((u32_at(t, e)?, ((hi << 32) | lo) as i64));
                    }
                    off += vlen * 12;
                    Type::Enum { name, values }
                }
                KIND_FUNC_PROTO => {
                    off += vlen * 8;
                    Type::Other
                }
                KIND_VAR | KIND_DECL_TAG => {
                    off += 4;
                    Type::Other
                }
                KIND_DATASEC => {
                    off += vlen * 12;
                    Type::Other
                }
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push(ty);
        }
        Ok(Self { strings, types })
    }

    fn name(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias(next) => id = *next,
                t => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// struct/union members (sk_buff nests its headers in several).
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("member {member} in struct {struct_name}"));
        let members = self
            .types
            .iter()
            .find_map(|t| match t {
                Type::Composite { name, members } if self.name(*name) == struct_name => {
                    Some(members)
                }
                _ => None,
            })
            .ok_or_else(|| BtfError::Missing(format!("struct {struct_name}")))?;
        let bits = self.find_member(members, member, 0).ok_or_else(missing)?;
        if bits % 8 != 0 {
            return Err(BtfError::Missing(format!(
                "byte-aligned member {member} in struct {struct_name} (it is a bitfield)"
            )));
        }
        Ok(bits / 8)
    }

    fn find_member(&self, members: &[Member], wanted: &str, base: u32) -> Option<u32> {
        for m in members {
            let name = self.name(m.name);
            if name == wanted {
                return Some(base + m.bit_offset);
            }
            if name.is_empty()
                && let Some(Type::Composite { members: inner, .. }) = self.resolve(m.type_id)
                && let Some(found) = self.find_member(inner, wanted, base + m.bit_offset)
            {
                return Some(found);
            }
        }
        None
    }

    /// All values of `enum name`, by enumerator name.
    pub fn enum_values(&self, enum_name: &str) -> Result<BTreeMap<String, i64>, BtfError> {
        self.types
            .iter()
            .find_map(|t| match t {
                Type::Enum { name, values } if self.name(*name) == enum_name => Some(
                    values
                        .iter()
                        .map(|(n, v)| (self.name(*n).to_string(), *v))
                        .collect(),
                ),
                _ => None,
            })
            .ok_or_else(|| BtfError::Missing(format!("enum {enum_name}")))
    }
}

/// `sk_buff` offsets the drop program needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkbOffsets {
    pub head: u32,
    pub network_header: u32,
    pub transport_header: u32,
}

impl SkbOffsets {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        Ok(Self {
            head: btf.member_offset("sk_buff", "head")?,
            network_header: btf.member_offset("sk_buff", "network_header")?,
            transport_header: btf.member_offset("sk_buff", "transport_header")?,
        })
    }
}

/// Offsets the drop program follows from a dropped packet to its network
/// namespace's inode number (`flowpol agent --drop-netns`). All 0 when
/// unused: the program then never reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetnsOffsets {
    /// `sk_buff.dev`, `sk_buff.sk`.
    pub skb_dev: u32,
    pub skb_sk: u32,
    /// `net_device.nd_net` (a `possible_net_t`: the `struct net *` is its one member).
    pub dev_net: u32,
    /// `sock.__sk_common.skc_net`.
    pub sk_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
}

impl NetnsOffsets {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        Ok(Self {
            skb_dev: btf.member_offset("sk_buff", "dev")?,
            skb_sk: btf.member_offset("sk_buff", "sk")?,
            dev_net: btf.member_offset("net_device", "nd_net")?,
            sk_net: btf.member_offset("sock", "__sk_common")?
                + btf.member_offset("sock_common", "skc_net")?,
            net_inum: btf.member_offset("net", "ns")? + btf.member_offset("ns_common", "inum")?,
        })
    }
}

/// The running kernel's drop reasons: number → name without the
/// `SKB_DROP_REASON_` prefix (`NETFILTER_DROP`).
#[derive(Debug, Clone, Default)]
pub struct DropReasons {
    names: BTreeMap<u32, String>,
    pub not_specified: u32,
}

impl DropReasons {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let values = btf.enum_values("skb_drop_reason")?;
        let mut names = BTreeMap::new();
        let mut not_specified = None;
        for (name, value) in values {
            let short = name
                .strip_prefix("SKB_DROP_REASON_")
                .or_else(|| name.strip_prefix("SKB_"))
                .unwrap_or(&name)
                .to_string();
            if short == "NOT_SPECIFIED" {
                not_specified = Some(value as u32);
            }
            names.entry(value as u32).or_insert(short);
        }
        Ok(Self {
            names,
            not_specified: not_specified.ok_or_else(|| {
                BtfError::Missing("SKB_DROP_REASON_NOT_SPECIFIED in enum skb_drop_reason".into())
            })?,
        })
    }

    /// The kernel's bitmap of the named reasons (short names as in [`Self::name`],
    /// with or without the `SKB_DROP_REASON_` prefix), and the names this
    /// kernel does not have or that do not fit the bitmap.
    pub fn bitmap(&self, names: &[String]) -> ([u32; ROUTINE_REASON_WORDS], Vec<String>) {
        let mut bits = [0u32; ROUTINE_REASON_WORDS];
        let mut unknown = Vec::new();
        for wanted in names {
            let short = wanted.trim().trim_start_matches("SKB_DROP_REASON_");
            match self.value(short) {
                Some(v) if (v as usize) < ROUTINE_REASON_WORDS * 32 => {
                    bits[v as usize / 32] |= 1 << (v % 32);
                }
                _ => unknown.push(wanted.clone()),
            }
        }
        (bits, unknown)
    }

    /// Value of a reason by its short name (`TCP_OLD_DATA`) in this kernel.
    pub fn value(&self, name: &str) -> Option<u32> {
        self.names
            .iter()
            .find_map(|(v, n)| (n.as_str() == name).then_some(*v))
    }

    /// Name of a reason; subsystem reasons (upper 16 bits set) have no core name.
    pub fn name(&self, reason: u32) -> String {
        match self.names.get(&reason) {
            Some(n) => n.clone(),
            None if reason >> 16 != 0 => {
                format!("SUBSYS_{}_{}", reason >> 16, reason & 0xffff)
            }
            None => format!("REASON_{reason}"),
        }
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(u32, &str)], not_specified: u32) -> Self {
        Self {
            names: pairs.iter().map(|(v, n)| (*v, n.to_string())).collect(),
            not_specified,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct outer { int a; union { struct { u16 b; u16 c; }; }; }`
    /// and `enum skb_drop_reason { SKB_NOT_DROPPED_YET=0, SKB_DROP_REASON_NOT_SPECIFIED=2, SKB_DROP_REASON_NETFILTER_DROP=12 }`.
    fn blob() -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut s = |name: &str| {
            let off = strings.len() as u32;
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            off
        };
        let (n_int, n_outer, n_a, n_b, n_c, n_enum) = (
            s("int"),
            s("outer"),
            s("a"),
            s("b"),
            s("c"),
            s("skb_drop_reason"),
        );
        let (e0, e2, e12) = (
            s("SKB_NOT_DROPPED_YET"),
            s("SKB_DROP_REASON_NOT_SPECIFIED"),
            s("SKB_DROP_REASON_NETFILTER_DROP"),
        );
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[n_int, KIND_INT << 24, 4, 32]);
        // 2: anonymous struct { b @0, c @16 }
        push(&[0, (KIND_STRUCT << 24) | 2, 4, n_b, 1, 0, n_c, 1, 16]);
        // 3: anonymous union { struct 2 @0 }
        push(&[0, (KIND_UNION << 24) | 1, 4, 0, 2, 0]);
        // 4: struct outer { a @0, union @64 }
        push(&[n_outer, (KIND_STRUCT << 24) | 2, 12, n_a, 1, 0, 0, 3, 64]);
        // 5: enum
        push(&[n_enum, (KIND_ENUM << 24) | 3, 4, e0, 0, e2, 2, e12, 12]);
        let mut b = Vec::new();
        b.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 10);
        assert!(btf.member_offset("outer", "zz").is_err());
        assert!(btf.member_offset("nope", "a").is_err());
    }

    #[test]
    fn names_drop_reasons() {
        let btf = Btf::parse(&blob()).unwrap();
        let r = DropReasons::from_btf(&btf).unwrap();
        assert_eq!(r.not_specified, 2);
        assert_eq!(r.name(12), "NETFILTER_DROP");
        assert_eq!(r.name(0), "NOT_DROPPED_YET");
        assert_eq!(r.name(99), "REASON_99");
        assert_eq!(r.name(0x0003_0001), "SUBSYS_3_1");
    }

    #[test]
    fn routine_reasons_become_a_bitmap_of_this_kernels_values() {
        let btf = Btf::parse(&blob()).unwrap();
        let r = DropReasons::from_btf(&btf).unwrap();
        let names = [
            "NETFILTER_DROP",
            "SKB_DROP_REASON_NOT_SPECIFIED",
            "TCP_OLD_DATA",
        ]
        .map(String::from);
        let (bits, unknown) = r.bitmap(&names);
        assert_eq!(bits[0], (1 << 12) | (1 << 2));
        assert!(bits[1..].iter().all(|w| *w == 0));
        assert_eq!(unknown, vec!["TCP_OLD_DATA".to_string()]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, clearly not").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb]).is_err());
    }

    #[test]
    fn reads_the_running_kernel_when_present() {
        // Only meaningful where the kernel exposes BTF; the parse must then succeed.
        let Ok(bytes) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return;
        };
        let btf = Btf::parse(&bytes).unwrap();
        let off = SkbOffsets::from_btf(&btf).unwrap();
        // The header offsets are adjacent u16 fields; all lie inside sk_buff.
        assert_eq!(off.transport_header.abs_diff(off.network_header), 2);
        assert!(off.head < 512 && off.network_header < 512);
        assert_ne!(off.head, off.network_header);
        let ns = NetnsOffsets::from_btf(&btf).unwrap();
        // Pointers are 8-byte aligned; `sk_buff.dev` shares the first cache line
        // with next/prev, and `skc_net` sits in the socket's common header.
        for off in [ns.skb_dev, ns.skb_sk, ns.dev_net, ns.sk_net] {
            assert_eq!(off % 8, 0, "{ns:?}");
        }
        assert_eq!(ns.skb_dev, 16, "{ns:?}");
        assert!(ns.sk_net < 128 && ns.net_inum.is_multiple_of(4), "{ns:?}");
        let reasons = DropReasons::from_btf(&btf).unwrap();
        assert!(reasons.not_specified > 0);
        assert!(reasons.names.values().any(|n| n == "NETFILTER_DROP"));
    }
}
