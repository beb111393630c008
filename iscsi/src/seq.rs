//! Command numbering for one session (RFC 7143 §4.2.2): ExpCmdSN/MaxCmdSN and the
//! command window, in serial-number arithmetic (RFC 1982).

/// `a < b` in 32-bit serial arithmetic.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// `a <= b` in 32-bit serial arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

/// The command window. `depth` bounds how many commands may be outstanding at once:
/// MaxCmdSN = ExpCmdSN - 1 + (depth - outstanding), so it never moves backwards.
#[derive(Debug, Clone)]
pub struct CmdWindow {
    pub exp_cmd_sn: u32,
    pub depth: u32,
    pub outstanding: u32,
    /// The highest MaxCmdSN ever sent: the window never shrinks below what the
    /// initiator was told (§4.2.2.1), even if a slot is taken just after a response
    /// carried a larger value.
    advertised: u32,
}

/// Where a received CmdSN falls.
#[derive(Debug, PartialEq, Eq)]
pub enum CmdSnCheck {
    /// The next expected command.
    InOrder,
    /// Inside the window but ahead of a gap.
    Ahead,
    /// Outside the window (stale or beyond MaxCmdSN): silently ignore (§4.2.2.1).
    Outside,
}

impl CmdWindow {
    pub fn new(exp_cmd_sn: u32, depth: u32) -> CmdWindow {
        CmdWindow {
            exp_cmd_sn,
            depth,
            outstanding: 0,
            advertised: exp_cmd_sn.wrapping_add(depth).wrapping_sub(1),
        }
    }

    /// ExpCmdSN - 1 + free slots — equal to ExpCmdSN - 1, a closed window, when
    /// `depth` commands are outstanding — but never below a value already advertised.
    pub fn max_cmd_sn(&mut self) -> u32 {
        let free = self.depth.saturating_sub(self.outstanding);
        let natural = self.exp_cmd_sn.wrapping_add(free).wrapping_sub(1);
        if sn_lt(self.advertised, natural) {
            self.advertised = natural;
        }
        self.advertised
    }

    pub fn check(&mut self, cmd_sn: u32) -> CmdSnCheck {
        let max = self.max_cmd_sn();
        let open = sn_le(self.exp_cmd_sn, max);
        if cmd_sn == self.exp_cmd_sn && open {
            CmdSnCheck::InOrder
        } else if open && sn_lt(self.exp_cmd_sn, cmd_sn) && sn_le(cmd_sn, max) {
            CmdSnCheck::Ahead
        } else {
            CmdSnCheck::Outside
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(sn_lt(0xffff_fff0, 5));
        assert!(!sn_lt(5, 0xffff_fff0));
        assert!(sn_le(7, 7));
    }

    #[test]
    fn window_bounds_and_never_shrinks() {
        let mut w = CmdWindow::new(10, 4);
        assert_eq!(w.max_cmd_sn(), 13);
        assert_eq!(w.check(10), CmdSnCheck::InOrder);
        assert_eq!(w.check(13), CmdSnCheck::Ahead);
        assert_eq!(w.check(14), CmdSnCheck::Outside);
        assert_eq!(w.check(9), CmdSnCheck::Outside);
        // Receive one: ExpCmdSN+1 and outstanding+1 keep MaxCmdSN where it was.
        w.exp_cmd_sn += 1;
        w.outstanding += 1;
        assert_eq!(w.max_cmd_sn(), 13);
        w.outstanding -= 1;
        assert_eq!(w.max_cmd_sn(), 14);
    }

    #[test]
    fn full_window_closes_and_refuses_the_next_command() {
        let mut w = CmdWindow::new(10, 2);
        assert_eq!(w.max_cmd_sn(), 11);
        w.exp_cmd_sn = 12;
        w.outstanding = 2;
        assert_eq!(w.max_cmd_sn(), 11, "MaxCmdSN = ExpCmdSN - 1: closed");
        assert_eq!(w.check(12), CmdSnCheck::Outside);
        w.outstanding = 1;
        assert_eq!(w.check(12), CmdSnCheck::InOrder);
    }

    #[test]
    fn advertised_max_never_shrinks() {
        let mut w = CmdWindow::new(10, 4);
        // A command arrives (ExpCmdSN+1) and a response goes out before its slot is
        // counted: the initiator now believes MaxCmdSN is 14.
        w.exp_cmd_sn = 11;
        assert_eq!(w.max_cmd_sn(), 14);
        w.outstanding = 1;
        assert_eq!(w.max_cmd_sn(), 14, "not back to 13");
        assert_eq!(w.check(14), CmdSnCheck::Ahead, "14 was promised");
    }

    #[test]
    fn window_across_wrap() {
        let mut w = CmdWindow::new(u32::MAX, 4);
        assert_eq!(w.max_cmd_sn(), 2);
        assert_eq!(w.check(1), CmdSnCheck::Ahead);
        assert_eq!(w.check(3), CmdSnCheck::Outside);
    }
}
