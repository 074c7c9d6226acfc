//! Big-endian field access for the header views: reads and writes at named offsets.
//!
//! The views check their buffer's length once when they are made, so these index
//! within it.

use std::ops::Range;

#[inline(always)]
pub(super) fn get_u16(b: &[u8], at: Range<usize>) -> u16 {
    u16::from_be_bytes([b[at.start], b[at.start + 1]])
}

#[inline(always)]
pub(super) fn set_u16(b: &mut [u8], at: Range<usize>, v: u16) {
    b[at.start..at.start + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
pub(super) fn get_u32(b: &[u8], at: Range<usize>) -> u32 {
    u32::from_be_bytes([b[at.start], b[at.start + 1], b[at.start + 2], b[at.start + 3]])
}

#[inline(always)]
pub(super) fn set_u32(b: &mut [u8], at: Range<usize>, v: u32) {
    b[at.start..at.start + 4].copy_from_slice(&v.to_be_bytes());
}
