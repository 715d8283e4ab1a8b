//! The live view drawn on ratatui's TestBackend from fixed reports, held
//! by insta snapshots, and its keys.

use std::time::Duration;

use ratatui::{
    Terminal,
    backend::TestBackend,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
    style::Modifier,
};
use tracer_ebpf::{FAMILY_IPV4, FlowId, TUPLE_PORTS, Tuple, VNI_PRESENT};

use super::{
    render,
    state::{State, Tab},
};
use crate::{
    analysis::paths::{self, Rows},
    collectors::{drops::DropCounts, flows::Counts, verdicts::VerdictCounts},
    model::{Direction, Hook, IpFamily, Table},
    output::{DropRow, FlowRow, Report, Scope, VerdictRow},
    topology::links::Links,
};

fn tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Tuple {
    let mut t = Tuple {
        family: FAMILY_IPV4,
        proto: 17,
        sport,
        dport,
        flags: TUPLE_PORTS,
        ..Tuple::default()
    };
    t.src[..4].copy_from_slice(&src);
    t.dst[..4].copy_from_slice(&dst);
    t
}

fn ids(dport: u16) -> (FlowId, FlowId) {
    let inner = tuple([10, 1, 100, 1], [10, 1, 100, 2], 41000, dport);
    (
        FlowId {
            outer: inner,
            ..FlowId::default()
        },
        FlowId {
            outer: tuple([10, 1, 1, 1], [10, 1, 1, 2], 36789, 4789),
            inner,
            vni: VNI_PRESENT | 4242,
            _pad: 0,
        },
    )
}

use Direction::{Egress as Out, Ingress as In};

fn flow(ns: &str, iface: &str, dir: Direction, id: FlowId, packets: u64) -> FlowRow {
    FlowRow {
        netns: ns.into(),
        iface: iface.into(),
        dir,
        id,
        counts: Counts {
            packets,
            bytes: packets * 242,
            max_len: 242,
            ..Counts::default()
        },
    }
}

/// One interval of the overlay lab: `ok` packets delivered to port 5001,
/// `blocked` to port 5002 dropped by host B's INPUT (UDP 4789).
fn interval(ok: u64, blocked: u64) -> Report {
    let mut flows = Vec::new();
    for (dport, n, through) in [(5001, ok, true), (5002, blocked, false)] {
        if n == 0 {
            continue;
        }
        let (plain, vx) = ids(dport);
        flows.extend([
            flow("c1", "eth0", Out, plain, n),
            flow("ha", "vc1", In, plain, n),
            flow("ha", "vx0", Out, plain, n),
            flow("ha", "ul0", Out, vx, n),
            flow("hb", "ul0", In, vx, n),
        ]);
        if through {
            flows.extend([
                flow("hb", "vx0", In, plain, n),
                flow("hb", "vc2", Out, plain, n),
                flow("c2", "eth0", In, plain, n),
            ]);
        }
    }
    let vx = ids(5002).1;
    let (drops, verdicts) = if blocked > 0 {
        (
            vec![DropRow {
                netns: "hb".into(),
                iface: Some("ul0".into()),
                id: vx,
                reason: Some("NETFILTER_DROP".into()),
                location: "nft_do_chain+0x3e8".into(),
                fragment: None,
                counts: DropCounts {
                    packets: blocked,
                    bytes: blocked * 292,
                },
            }],
            vec![VerdictRow {
                netns: "hb".into(),
                iface: Some("ul0".into()),
                family: IpFamily::Ipv4,
                hook: Hook::Input,
                table: Table::Filter,
                id: vx,
                counts: VerdictCounts {
                    entered: blocked,
                    left: 0,
                    unleft: 0,
                },
                rule: Some("-A INPUT -p udp -m udp --dport 4789 -j DROP".into()),
            }],
        )
    } else {
        (vec![], vec![])
    };
    let mut r = Report {
        scope: Scope::Interval,
        elapsed: Duration::from_secs(1),
        flows,
        drops,
        verdicts,
        ..Report::default()
    };
    r.paths = paths::paths(&Links::test_overlay(), Rows::of(&r));
    r
}

/// Three seconds of traffic, then `quiet` seconds of none.
fn state(quiet: usize) -> State {
    let mut s = State::new(Links::test_overlay(), None);
    for (ok, blocked) in [(10, 4), (20, 4), (30, 2)] {
        s.report(interval(ok, blocked));
    }
    for _ in 0..quiet {
        s.report(interval(0, 0));
    }
    s
}

fn draw(s: &State, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| render::draw(f, s)).unwrap();
    t
}

fn key(s: &mut State, code: KeyCode) {
    s.key(KeyEvent::new(code, KeyModifiers::NONE));
}

fn typed(s: &mut State, text: &str) {
    for c in text.chars() {
        key(s, KeyCode::Char(c));
    }
}

#[test]
fn paths_view_shows_where_and_why() {
    let s = state(0);
    insta::assert_snapshot!(draw(&s, 150, 8).backend());
}

/// Ten seconds after the traffic stopped the path and its drop are still
/// there, dimmed.
#[test]
fn rows_that_stop_moving_stay_dimmed() {
    let s = state(10);
    let t = draw(&s, 150, 8);
    insta::assert_snapshot!(t.backend());
    let buf = t.backend().buffer();
    // Row 3 is the first path (the blocked one, most lost first).
    assert!(buf[(0, 3)].modifier.contains(Modifier::DIM));
    let moving = draw(&state(0), 150, 8);
    assert!(
        !moving.backend().buffer()[(0, 3)]
            .modifier
            .contains(Modifier::DIM)
    );
}

#[test]
fn enter_shows_the_hops_in_order_and_esc_goes_back() {
    let mut s = state(0);
    key(&mut s, KeyCode::Enter);
    insta::assert_snapshot!(draw(&s, 120, 14).backend());
    key(&mut s, KeyCode::Down);
    key(&mut s, KeyCode::Esc);
    assert!(!s.detail);
    key(&mut s, KeyCode::Enter);
    // The second path: delivered, no loss.
    let screen = draw(&s, 120, 14).backend().to_string();
    assert!(screen.contains("sent 60  arrived 60  lost 0"), "{screen}");
}

#[test]
fn drops_and_verdicts_views() {
    let mut s = state(0);
    key(&mut s, KeyCode::Char('2'));
    assert_eq!(s.tab, Tab::Drops);
    insta::assert_snapshot!("drops", draw(&s, 150, 5).backend());
    key(&mut s, KeyCode::Tab);
    insta::assert_snapshot!("verdicts", draw(&s, 150, 5).backend());
}

#[test]
fn filter_key_points_at_a_bad_token_then_filters() {
    let mut s = state(0);
    key(&mut s, KeyCode::Char('/'));
    typed(&mut s, "inner udp port x5002");
    key(&mut s, KeyCode::Enter);
    insta::assert_snapshot!(draw(&s, 80, 6).backend());
    for _ in 0.."x5002".len() {
        key(&mut s, KeyCode::Backspace);
    }
    typed(&mut s, "5002");
    key(&mut s, KeyCode::Enter);
    assert!(s.editing.is_none());
    assert_eq!(s.shown_paths().len(), 1);
    assert_eq!(s.shown_paths()[0].row.id.outer.dport, 5002);
    // Empty clears it.
    key(&mut s, KeyCode::Char('/'));
    for _ in 0..30 {
        key(&mut s, KeyCode::Backspace);
    }
    key(&mut s, KeyCode::Enter);
    assert!(s.filter.is_none());
    assert_eq!(s.shown_paths().len(), 2);
}

#[test]
fn sort_pause_help_and_quit() {
    let mut s = state(0);
    assert_eq!(
        s.shown_paths()[0].row.id.outer.dport,
        5002,
        "most lost first"
    );
    key(&mut s, KeyCode::Char('s'));
    assert_eq!(s.shown_paths()[0].row.id.outer.dport, 5001, "busiest first");
    key(&mut s, KeyCode::Char(' '));
    s.report(interval(5, 0));
    assert_eq!((s.tick, s.held()), (3, 1), "held while paused");
    key(&mut s, KeyCode::Char('?'));
    insta::assert_snapshot!(draw(&s, 90, 16).backend());
    key(&mut s, KeyCode::Char('x'));
    assert!(!s.help);
    key(&mut s, KeyCode::Char(' '));
    assert_eq!((s.tick, s.held()), (4, 0), "applied on resume");
    assert!(!s.quit);
    key(&mut s, KeyCode::Char('q'));
    assert!(s.quit);
    let mut s = state(0);
    s.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(s.quit);
}

#[test]
fn news_of_a_new_drop_shows_for_a_few_intervals() {
    let mut s = state(0);
    let mut first = interval(0, 1);
    first.scope = Scope::First;
    s.report(first);
    assert_eq!(
        s.status.as_deref(),
        Some("new drop: NETFILTER_DROP in hb/ul0")
    );
    let screen = draw(&s, 120, 6).backend().to_string();
    assert!(
        screen.contains("new drop: NETFILTER_DROP in hb/ul0"),
        "{screen}"
    );
    for _ in 0..5 {
        s.report(interval(0, 0));
    }
    assert!(s.status.is_some());
    s.report(interval(0, 0));
    assert!(s.status.is_none());
}

#[test]
fn any_terminal_size_draws() {
    let mut s = state(2);
    for (w, h) in [(1, 1), (10, 3), (40, 4), (300, 80)] {
        draw(&s, w, h);
        key(&mut s, KeyCode::Enter);
        draw(&s, w, h);
        key(&mut s, KeyCode::Char('?'));
        draw(&s, w, h);
        key(&mut s, KeyCode::Esc);
    }
}

#[test]
fn ipv6_link_local_noise_is_hidden_until_asked() {
    let mut s = state(0);
    let mut r = interval(0, 0);
    let mut t = tuple([0; 4], [0; 4], 0, 0);
    t.family = tracer_ebpf::FAMILY_IPV6;
    t.proto = 58;
    t.flags = 0;
    t.src = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    t.dst = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let id = FlowId {
        outer: t,
        ..FlowId::default()
    };
    r.flows.push(flow("c1", "eth0", Out, id, 1));
    r.paths = paths::paths(&Links::test_overlay(), Rows::of(&r));
    s.report(r);
    assert_eq!(s.shown_paths().len(), 2);
    assert_eq!(s.hidden_noise(), 1);
    key(&mut s, KeyCode::Char('a'));
    assert_eq!(s.shown_paths().len(), 3);
}
