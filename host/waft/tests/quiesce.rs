//! Quiet groups on real daemons: an idle group quiesces on every member (no
//! heartbeats, no ticks); a linearizable read and a write are served at once
//! when it wakes, in the same term (no election was needed); a follower read
//! wakes it too; and when the quiet leader's process dies, its followers
//! notice through their connection to it, wake, and elect another.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Spec, get, set, text};
use waft_daemon::client::Client;
use waft_proto::client::{Consistency, GroupStatus};

const GROUP: u64 = 1;
/// Quiescing takes two election timeouts of idleness (0.6 s by default);
/// the wait allows for a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

async fn statuses(c: &Cluster, among: &[usize]) -> Vec<Option<GroupStatus>> {
    let mut all = Vec::new();
    for &i in among {
        all.push(c.status(i, GROUP).await);
    }
    all
}

async fn wait_quiet(c: &mut Cluster, among: &[usize]) -> Vec<GroupStatus> {
    let deadline = Instant::now() + SETTLE;
    loop {
        c.check_alive();
        let all = statuses(c, among).await;
        if all.iter().all(|s| s.as_ref().is_some_and(|s| s.quiesced)) {
            return all.into_iter().flatten().collect();
        }
        let seen: Vec<_> = all.iter().map(|s| s.as_ref().map(|s| (s.role, s.term, s.quiesced))).collect();
        assert!(Instant::now() < deadline, "the group did not go quiet: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_group_answers_at_once_when_woken_and_survives_its_leaders_death() {
    let mut c = Cluster::start("quiesce", 3, Spec::one(GROUP, "waft_atomic"));
    let leader = c.wait_for_leader(GROUP).await;
    let client = Client::with_nodes(c.addrs.clone());
    client.propose(GROUP, set("k", 1)).await.unwrap();

    let quiet = wait_quiet(&mut c, &[0, 1, 2]).await;
    let term = quiet[leader].term;
    assert!(quiet.iter().all(|s| s.term == term && s.leader_id == leader as u64 + 1), "{quiet:?}");

    // Woken by a linearizable read at the leader: answered, same term.
    let at_leader = Client::with_nodes(vec![c.addrs[leader].clone()]);
    let answer = at_leader.query(GROUP, get("k"), Consistency::Linearizable).await.unwrap();
    assert_eq!(text(&answer), "1");
    // And a write.
    at_leader.propose(GROUP, set("k", 2)).await.unwrap();
    let s = c.status(leader, GROUP).await.unwrap();
    assert_eq!((s.term, s.leader_id), (term, leader as u64 + 1), "woken without an election");

    // Quiet again; a follower read wakes the follower and its leader.
    wait_quiet(&mut c, &[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let at_follower = Client::with_nodes(vec![c.addrs[follower].clone()]);
    let answer = at_follower.query(GROUP, get("k"), Consistency::Follower).await.unwrap();
    assert_eq!(text(&answer), "2");
    assert_eq!(c.status(follower, GROUP).await.unwrap().term, term, "woken without an election");

    // Quiet again, then the leader's process dies: the followers' streams
    // to it break, they wake, and one of them takes over.
    wait_quiet(&mut c, &[0, 1, 2]).await;
    c.kill(leader);
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let started = Instant::now();
    let new = c.wait_for_leader_among(GROUP, &others).await;
    eprintln!("a new leader {:?} after the quiet leader died", started.elapsed());
    let survivors = Client::with_nodes(others.iter().map(|i| c.addrs[*i].clone()).collect());
    survivors.propose(GROUP, set("k", 3)).await.unwrap();
    let answer = survivors.query(GROUP, get("k"), Consistency::Linearizable).await.unwrap();
    assert_eq!(text(&answer), "3");
    assert!(c.status(new, GROUP).await.unwrap().term > term);
}
