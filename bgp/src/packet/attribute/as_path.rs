//! AS_PATH (RFC 4271 §4.3, RFC 6793 for 4-octet AS): segments, length for best-path, loop
//! checks, prepending and the AS4_PATH merge.

use super::*;

/// AS_PATH segment types (RFC 4271, RFC 5065).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegmentType {
    /// Unordered set (from aggregation).
    Set = 1,
    /// Ordered sequence.
    Sequence = 2,
    /// Confederation sequence.
    ConfedSequence = 3,
    /// Confederation set.
    ConfedSet = 4,
}

impl SegmentType {
    pub(in crate::packet) fn from_wire(v: u8) -> Option<Self> {
        Some(match v {
            1 => SegmentType::Set,
            2 => SegmentType::Sequence,
            3 => SegmentType::ConfedSequence,
            4 => SegmentType::ConfedSet,
            _ => return None,
        })
    }
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct AsSegment {
    /// Segment type.
    pub kind: SegmentType,
    /// AS numbers in wire order.
    pub asns: Vec<u32>,
}

/// An AS_PATH, always held with 4-octet AS numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct AsPath {
    /// Segments in wire order.
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    /// A path made of one sequence.
    pub fn from_sequence(asns: impl IntoIterator<Item = u32>) -> Self {
        let asns: Vec<u32> = asns.into_iter().collect();
        if asns.is_empty() {
            return AsPath::default();
        }
        AsPath {
            segments: vec![AsSegment {
                kind: SegmentType::Sequence,
                asns,
            }],
        }
    }

    /// Length for best-path selection: a set counts as one, confederation segments as zero.
    pub fn path_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentType::Sequence => s.asns.len(),
                SegmentType::Set => 1,
                SegmentType::ConfedSequence | SegmentType::ConfedSet => 0,
            })
            .sum()
    }

    /// Whether `asn` appears anywhere, for loop detection.
    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| s.asns.contains(&asn))
    }

    /// How many times `asn` appears, for loop detection that tolerates a few.
    pub fn count(&self, asn: u32) -> usize {
        self.segments
            .iter()
            .map(|s| s.asns.iter().filter(|a| **a == asn).count())
            .sum()
    }

    /// The neighbouring AS (first AS of a leading sequence), used to scope MED comparison.
    pub fn first_as(&self) -> Option<u32> {
        match self.segments.first() {
            Some(AsSegment {
                kind: SegmentType::Sequence,
                asns,
            }) => asns.first().copied(),
            _ => None,
        }
    }

    /// Prepends our AS as we send the path to an eBGP peer.
    pub fn prepend(&mut self, asn: u32) {
        match self.segments.first_mut() {
            Some(seg) if seg.kind == SegmentType::Sequence && seg.asns.len() < 255 => {
                seg.asns.insert(0, asn)
            }
            _ => self.segments.insert(
                0,
                AsSegment {
                    kind: SegmentType::Sequence,
                    asns: vec![asn],
                },
            ),
        }
    }

    /// Whether any AS number needs four octets.
    pub(in crate::packet) fn needs_four_octets(&self) -> bool {
        self.segments
            .iter()
            .any(|s| s.asns.iter().any(|&a| a > 0xffff))
    }

    pub(in crate::packet) fn has_confed(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s.kind, SegmentType::ConfedSequence | SegmentType::ConfedSet))
    }

    pub(in crate::packet) fn encode(&self, four_octet: bool, out: &mut Vec<u8>) {
        for seg in &self.segments {
            for chunk in seg.asns.chunks(255) {
                out.put_u8(seg.kind as u8);
                out.put_u8(chunk.len() as u8);
                for &asn in chunk {
                    if four_octet {
                        out.put_u32(asn);
                    } else {
                        out.put_u16(u16::try_from(asn).unwrap_or(AS_TRANS as u16));
                    }
                }
            }
        }
    }

    /// Decodes segments; `None` when the value is malformed (RFC 7606 §7.2).
    pub(in crate::packet) fn decode(mut value: &[u8], four_octet: bool) -> Option<AsPath> {
        let width = if four_octet { 4 } else { 2 };
        let mut segments = Vec::new();
        while !value.is_empty() {
            if value.len() < 2 {
                return None;
            }
            let kind = SegmentType::from_wire(value[0])?;
            let count = usize::from(value[1]);
            if count == 0 || value.len() < 2 + count * width {
                return None;
            }
            let asns = value[2..2 + count * width]
                .chunks_exact(width)
                .map(|c| {
                    if four_octet {
                        u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                    } else {
                        u32::from(u16::from_be_bytes([c[0], c[1]]))
                    }
                })
                .collect();
            segments.push(AsSegment { kind, asns });
            value = &value[2 + count * width..];
        }
        Some(AsPath { segments })
    }

    /// Rebuilds the true path from AS_PATH and AS4_PATH (RFC 6793 §4.2.3).
    pub(in crate::packet) fn merge_as4(self, as4: AsPath) -> AsPath {
        let (n, n4) = (self.path_len(), as4.path_len());
        if n < n4 {
            return self;
        }
        let mut keep = n - n4;
        let mut segments = Vec::new();
        for seg in self.segments {
            if keep == 0 {
                break;
            }
            match seg.kind {
                SegmentType::Sequence if seg.asns.len() > keep => {
                    segments.push(AsSegment {
                        kind: seg.kind,
                        asns: seg.asns[..keep].to_vec(),
                    });
                    keep = 0;
                }
                SegmentType::Sequence => {
                    keep -= seg.asns.len();
                    segments.push(seg);
                }
                SegmentType::Set => {
                    keep -= 1;
                    segments.push(seg);
                }
                _ => segments.push(seg),
            }
        }
        for seg in as4.segments {
            match segments.last_mut() {
                Some(last)
                    if last.kind == SegmentType::Sequence
                        && seg.kind == SegmentType::Sequence
                        && last.asns.len() + seg.asns.len() <= 255 =>
                {
                    last.asns.extend(seg.asns)
                }
                _ => segments.push(seg),
            }
        }
        AsPath { segments }
    }
}
