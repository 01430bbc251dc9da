//! What a run shows: the timeline rows and the picture of node states.

use super::*;

impl World {
    /// Records what the SVG picture shows: node states, promotions, acknowledged writes.
    /// With `unchanged` (see [`Checker::step`]) the node states are as last recorded.
    pub(super) fn picture_step(&mut self, unchanged: bool) {
        if self.timeline.capacity() == 0 {
            return;
        }
        for h in &self.happened {
            if let Happening::BecamePrimary { node, epoch } = *h {
                self.picture.promotion(self.now, node, epoch);
            }
        }
        for a in &self.acked[self.pictured_acks..] {
            self.picture.write(a.at, a.node);
        }
        self.pictured_acks = self.acked.len();
        if unchanged {
            return;
        }
        let nodes = self.slots.len();
        let any_peer_cut = self.peer_cut.iter().any(|c| *c > 0);
        for (i, slot) in self.slots.iter().enumerate() {
            let role = if slot.node.is_none() {
                RoleBar::Down
            } else if slot.paused {
                RoleBar::Paused
            } else if slot.acting().is_some() {
                RoleBar::Primary
            } else if matches!(slot.res_busy, Some(ResOp::Promote(_))) {
                RoleBar::Promoting
            } else if matches!(slot.res_busy, Some(ResOp::Demote)) {
                RoleBar::Demoting
            } else {
                RoleBar::Replica
            };
            let peer_cut = any_peer_cut
                && (0..nodes).any(|j| self.peer_cut[i * nodes + j] > 0 || self.peer_cut[j * nodes + i] > 0);
            let state = NodeState {
                role,
                belief: slot.node.is_some() && slot.declared_until.is_some_and(|u| u > self.now),
                holds_key: self.lease.is_some_and(|l| l.node == i),
                store_cut: slot.to_store_cut + slot.from_store_cut > 0,
                peer_cut,
            };
            self.picture.state(i, self.now, state);
        }
    }

    pub(crate) fn glyphs(&self) -> String {
        let (buf, len) = self.glyph_bytes();
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }

    /// The glyphs of [`glyphs`](Self::glyphs) without allocating (at most 9 nodes, 4 bytes each).
    pub(super) fn glyph_bytes(&self) -> ([u8; 36], usize) {
        let mut buf = [b' '; 36];
        let mut len = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            let g = if slot.node.is_none() {
                'x'
            } else if slot.paused {
                'z'
            } else if slot.acting().is_some() {
                'P'
            } else if matches!(slot.res_busy, Some(ResOp::Promote(_))) {
                'p'
            } else if matches!(slot.res_busy, Some(ResOp::Demote)) {
                'd'
            } else {
                'r'
            };
            buf[len] = g as u8;
            buf[len + 1] = if self.lease.is_some_and(|l| l.node == i) { b'L' } else { b' ' };
            buf[len + 2] = if slot.to_store_cut + slot.from_store_cut > 0 { b'#' } else { b' ' };
            len += 4;
        }
        (buf, len)
    }

    pub(super) fn row_if_changed(&mut self) {
        if self.timeline.capacity() == 0 {
            return;
        }
        let (buf, len) = self.glyph_bytes();
        if self.timeline.last_glyphs().as_bytes() != &buf[..len] {
            let g = String::from_utf8_lossy(&buf[..len]).into_owned();
            self.timeline.push(self.now, g, String::new());
        }
    }

    pub(super) fn row(&mut self, note: &str) {
        if self.timeline.capacity() == 0 {
            return;
        }
        let g = self.glyphs();
        self.timeline.push(self.now, g, note.to_string());
    }
}
