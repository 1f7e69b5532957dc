//! GFS retention of DR points, and when a run starts a new chain.
//!
//! A DR point is kept when a rule keeps it (as `cairn repo forget` does: keep the newest N;
//! the newest of each of the last N hours, days, ISO weeks, months, years that have points, in
//! UTC), when it is the newest point or the one this run made (whatever the clock says), or
//! while the location's protection period covers it.
//! A kept point needs its whole chain (every increment back to its base), so those stay too;
//! every other point is removed.
//!
//! Removing old points therefore needs chains to end: a run starts a new chain (exports from
//! change 0) when the current chain's base would no longer be kept by the rules (retention
//! would otherwise hold the whole chain only for its tail), or when the chain has reached
//! [`Policy::max_chain`] points (a restore applies every link of a chain, and one damaged link
//! makes every later point of its chain unrestorable: the bound caps both).

use cairn_retention::Retention;

/// What to keep, and the longest chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Policy {
    /// The GFS rules (`cairn repo forget`'s).
    pub rules: Retention,
    /// The most points a chain holds before a run starts a new one.
    pub max_chain: u32,
}

/// What retention needs of a DR point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Point {
    /// The cursor it starts after (0: the base of a chain).
    pub from: u64,
    /// The sequence it reaches.
    pub to: u64,
    /// When it was made (unix seconds).
    pub time: u64,
    /// The point its run followed, as its manifest's `after` line names it.
    pub after: After,
}

/// The point a DR point's run followed (its manifest's `after` line), among those listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum After {
    /// No `after` line (a manifest of an older version): the link is found by change numbers.
    #[default]
    Unsaid,
    /// The point at this index.
    Listed(usize),
    /// A point not listed (removed, or its manifest unreadable).
    Missing,
}

/// Why the point a DR point extends cannot be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Gap {
    /// No listed point is the one it extends.
    Missing,
    /// Points of more than one history could be the one (manifests without `after` lines,
    /// linked by change numbers alone): their indices.
    Ambiguous(Vec<usize>),
}

impl Policy {
    /// Which of `times` the rules keep (the newest always).
    pub(crate) fn kept(&self, times: &[u64]) -> Vec<bool> {
        let rules = Retention {
            last: self.rules.last.max(1),
            ..self.rules
        };
        let times: Vec<i64> = times
            .iter()
            .map(|&t| i64::try_from(t).unwrap_or(i64::MAX))
            .collect();
        rules.keep(&times).iter().map(|r| !r.is_empty()).collect()
    }
}

/// The points `point` may extend: the one its `after` line names, when that reaches its `from`;
/// for a manifest without one, every point that reaches its `from` (two histories that share
/// change numbers both do). None for a base.
fn previous(points: &[Point], point: usize) -> Vec<usize> {
    let need = points[point].from;
    if need == 0 {
        return Vec::new();
    }
    match points[point].after {
        After::Listed(j) if j != point && points[j].to == need => vec![j],
        After::Listed(_) | After::Missing => Vec::new(),
        After::Unsaid => (0..points.len())
            .filter(|&j| j != point && points[j].to == need && points[j].from < need)
            .collect(),
    }
}

/// The point `point` extends (none for a base). A manifest without an `after` line is linked by
/// change numbers only when one point fits, or one of those that fit was made before it (one
/// history's points follow each other); else which history it belongs to cannot be told.
pub(crate) fn predecessor(points: &[Point], point: usize) -> Result<Option<usize>, Gap> {
    if points[point].from == 0 {
        return Ok(None);
    }
    let fit = previous(points, point);
    let before: Vec<usize> = fit
        .iter()
        .copied()
        .filter(|&j| points[j].time <= points[point].time)
        .collect();
    match (fit.as_slice(), before.as_slice()) {
        ([], _) => Err(Gap::Missing),
        ([one], _) | (_, [one]) => Ok(Some(*one)),
        _ => Err(Gap::Ambiguous(fit)),
    }
}

/// The chain that ends at `point`: its indices, newest first (as far back as the links can be
/// told).
pub(crate) fn chain(points: &[Point], point: usize) -> Vec<usize> {
    let mut chain = vec![point];
    let mut at = point;
    while let Ok(Some(p)) = predecessor(points, at) {
        if chain.contains(&p) {
            break;
        }
        chain.push(p);
        at = p;
    }
    chain
}

/// The points to keep: those `kept` (by the rules or the protection period) and every point
/// their chains may need: where a link cannot be told (two histories fit), every point that
/// fits is kept.
pub(crate) fn needed(points: &[Point], kept: &[bool]) -> Vec<bool> {
    let mut needed = vec![false; points.len()];
    let mut todo: Vec<usize> = (0..points.len()).filter(|&i| kept[i]).collect();
    while let Some(i) = todo.pop() {
        if std::mem::replace(&mut needed[i], true) {
            continue;
        }
        todo.extend(previous(points, i));
    }
    needed
}

/// What retention keeps of `points`, the last of which this run made: the points the rules
/// keep, those the protection period (`protection` seconds from their time) still covers at
/// `now`, the point this run made whatever its time says (with the clock gone back the rules
/// rank it below older points; removing it would lose the changes it holds, which the cursor has
/// moved past), and every point their chains need. Also how many of those are kept only for the
/// protection period.
pub(crate) fn decide(
    policy: &Policy,
    protection: u64,
    points: &[Point],
    now: u64,
) -> (Vec<bool>, usize) {
    let times: Vec<u64> = points.iter().map(|p| p.time).collect();
    let mut by_rules = policy.kept(&times);
    if let Some(made) = by_rules.last_mut() {
        *made = true;
    }
    let kept: Vec<bool> = (0..points.len())
        .map(|i| by_rules[i] || times[i].saturating_add(protection) > now)
        .collect();
    let keep = needed(points, &kept);
    let for_rules = needed(points, &by_rules);
    let held = (0..points.len())
        .filter(|&i| keep[i] && !for_rules[i])
        .count();
    (keep, held)
}

/// Why a run at `now` that would extend the chain ending at `current` starts a new one
/// instead, if it should. `current` is the point the cursor follows (none when it is gone).
pub(crate) fn rebase(
    policy: &Policy,
    points: &[Point],
    current: Option<usize>,
    now: u64,
) -> Option<String> {
    let Some(current) = current else {
        return Some("the DR point the cursor follows is gone".to_owned());
    };
    let chain = chain(points, current);
    let base = *chain.last()?;
    if points[base].from != 0 {
        let need = points[base].from;
        return Some(match predecessor(points, base) {
            Err(Gap::Ambiguous(fit)) => format!(
                "the chain's link at change {need} cannot be told ({} points of different \
                 histories reach it, and its point, written by an older version, does not name \
                 one)",
                fit.len()
            ),
            _ => format!("the chain is broken (no point reaches change {need})"),
        });
    }
    if chain.len() >= policy.max_chain.max(1) as usize {
        return Some(format!(
            "the chain has {} points, the most a chain holds",
            chain.len()
        ));
    }
    let mut times: Vec<u64> = points.iter().map(|p| p.time).collect();
    times.push(now);
    if !policy.kept(&times)[base] {
        return Some(
            "retention no longer keeps the chain's base: a new chain lets the old one go"
                .to_owned(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600;

    fn point(from: u64, to: u64, time: u64) -> Point {
        Point {
            from,
            to,
            time,
            after: After::Unsaid,
        }
    }

    fn after(from: u64, to: u64, time: u64, previous: usize) -> Point {
        Point {
            after: After::Listed(previous),
            ..point(from, to, time)
        }
    }

    /// A home put back to an older catalog, whose points were accepted: its new chain (2, 3)
    /// reaches change 4 as the retired history's point 1 did. Each point keeps its own chain.
    #[test]
    fn points_follow_their_after_line_not_a_change_number_of_another_history() {
        let points = [
            point(0, 2, 1),
            after(2, 4, 2, 0),
            after(4, 5, 3, 1),
            point(0, 4, 4),
            after(4, 6, 5, 3),
        ];
        assert_eq!(chain(&points, 2), [2, 1, 0]);
        assert_eq!(chain(&points, 4), [4, 3]);
        let kept = [false, false, true, false, false];
        assert_eq!(needed(&points, &kept), [true, true, true, false, false]);
        // A named point that is gone is a gap, not another history's point.
        let gone = [
            point(0, 4, 1),
            Point {
                after: After::Missing,
                ..point(4, 6, 2)
            },
        ];
        assert_eq!(predecessor(&gone, 1), Err(Gap::Missing));
    }

    /// Manifests of older versions (no `after` line) are linked by change numbers only when
    /// the link can be told: two points made before it that both fit are refused, and
    /// retention keeps both.
    #[test]
    fn unlinked_points_are_linked_only_when_one_fits() {
        // The retired history's 2 (4..5) was made before the new history's 3 (0..4).
        let points = [
            point(0, 2, 1),
            point(2, 4, 2),
            point(4, 5, 3),
            point(0, 4, 4),
        ];
        assert_eq!(predecessor(&points, 2), Ok(Some(1)));
        let both = [point(0, 4, 1), point(0, 4, 2), point(4, 5, 3)];
        assert_eq!(predecessor(&both, 2), Err(Gap::Ambiguous(vec![0, 1])));
        assert_eq!(needed(&both, &[false, false, true]), [true, true, true]);
    }

    #[test]
    fn gfs_keeps_the_newest_of_each_period() {
        let start = 1_796_187_600;
        // A point every hour for three days.
        let times: Vec<u64> = (0..72).map(|h| start + h * HOUR).collect();
        let policy = Policy {
            rules: Retention::new().hourly(5).daily(3),
            ..Policy::default()
        };
        let kept = policy.kept(&times);
        let kept: Vec<usize> = (0..72).filter(|&i| kept[i]).collect();
        // The last five hours, and the newest of each of the three days.
        assert!(kept.ends_with(&[67, 68, 69, 70, 71]), "{kept:?}");
        assert_eq!(kept.len(), 5 + 2, "{kept:?}");
        let last = Policy {
            rules: Retention::new().last(2),
            ..Policy::default()
        };
        assert_eq!(last.kept(&times[..4]), [false, false, true, true]);
        // The newest point is kept even with no rules.
        assert_eq!(Policy::default().kept(&times[..3]), [false, false, true]);
    }

    #[test]
    fn kept_points_keep_their_chains() {
        let points = [
            point(0, 4, 1),
            point(4, 9, 2),
            point(9, 12, 3),
            point(0, 15, 4),
            point(15, 20, 5),
        ];
        let kept = [false, true, false, false, true];
        assert_eq!(needed(&points, &kept), [true, true, false, true, true]);
        assert_eq!(chain(&points, 2), [2, 1, 0]);
    }

    #[test]
    fn the_point_a_run_made_is_kept_whatever_the_clock_says() {
        let policy = Policy {
            rules: Retention::new().last(2),
            max_chain: 10,
        };
        // The clock went back an hour: the new point (last) is dated before the others.
        let points = [
            point(0, 4, 10 * HOUR),
            point(4, 9, 11 * HOUR),
            point(9, 12, 12 * HOUR),
            point(12, 15, 11 * HOUR - 5),
        ];
        let (keep, held) = decide(&policy, 0, &points, 11 * HOUR);
        assert_eq!(
            keep,
            [true, true, true, true],
            "the new point and its chain"
        );
        assert_eq!(held, 0);

        // On time, the rules decide, and the protection period holds what they let go.
        let points = [
            point(0, 4, HOUR),
            point(0, 9, 2 * HOUR),
            point(0, 12, 3 * HOUR),
            point(0, 15, 4 * HOUR),
        ];
        let (keep, held) = decide(&policy, 0, &points, 4 * HOUR);
        assert_eq!(keep, [false, false, true, true]);
        assert_eq!(held, 0);
        let (keep, held) = decide(&policy, 2 * HOUR + 1, &points, 4 * HOUR);
        assert_eq!(keep, [false, true, true, true]);
        assert_eq!(held, 1);
    }

    #[test]
    fn a_run_rebases_when_the_base_falls_out_of_retention_or_the_chain_is_long() {
        let policy = Policy {
            rules: Retention::new().last(2),
            max_chain: 3,
        };
        let one = [point(0, 4, 1)];
        assert_eq!(rebase(&policy, &one, Some(0), 2), None);
        let two = [point(0, 4, 1), point(4, 9, 2)];
        assert!(
            rebase(&policy, &two, Some(1), 3).is_some_and(|r| r.contains("base")),
            "keep-last 2 no longer keeps the base"
        );
        let wide = Policy {
            rules: Retention::new().last(10),
            ..policy
        };
        assert_eq!(rebase(&wide, &two, Some(1), 3), None);
        let three = [point(0, 4, 1), point(4, 9, 2), point(9, 12, 3)];
        assert!(rebase(&wide, &three, Some(2), 4).is_some_and(|r| r.contains("most")));
        assert!(rebase(&wide, &three, None, 4).is_some());
        let broken = [point(4, 9, 2)];
        assert!(rebase(&wide, &broken, Some(0), 4).is_some_and(|r| r.contains("broken")));
        // Two histories reach the link: said as such, not as a link no point reaches.
        let both = [point(0, 4, 1), point(0, 4, 2), point(4, 9, 3)];
        let why = rebase(&wide, &both, Some(2), 4).expect("a new chain");
        assert!(
            why.contains("cannot be told") && why.contains("2 points"),
            "{why}"
        );
    }
}
