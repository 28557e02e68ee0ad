//! Runs the storage conformance suite against both log stores.

mod common;

use waft_storage::conformance::{self, Harness, MemHarness};
use waft_storage::{LogStore, RocksLogStore};

struct RocksHarness {
    scratch: common::Scratch,
    created: usize,
}

impl Harness for RocksHarness {
    type Store = RocksLogStore;

    fn fresh(&mut self) -> RocksLogStore {
        self.created += 1;
        RocksLogStore::open(self.scratch.join(&format!("db-{}", self.created))).expect("open fresh store")
    }

    fn reopen(&mut self, store: RocksLogStore) -> RocksLogStore {
        let path = store.path().to_path_buf();
        drop(store);
        RocksLogStore::open(&path).expect("reopen store")
    }
}

#[test]
fn mem_log_store_conforms() {
    conformance::run_all(&mut MemHarness);
}

#[test]
fn rocks_log_store_conforms() {
    let mut harness = RocksHarness { scratch: common::Scratch::new("conformance"), created: 0 };
    conformance::run_all(&mut harness);
}

/// The two stores answer identically to the same random workload.
#[test]
fn mem_and_rocks_agree_on_random_workload() {
    use waft_storage::testkit::{Model, Rng, next_ops, to_write_set};
    let scratch = common::Scratch::new("agree");
    let mut rocks = RocksLogStore::open(scratch.join("db")).expect("open");
    let mut mem = waft_storage::MemLogStore::new();
    let mut model = Model::default();
    let mut rng = Rng::new(42);
    for step in 0..300 {
        let ops = next_ops(&mem, &mut rng, &[1, 2, 3], 200);
        rocks.write(to_write_set(&ops)).expect("rocks write");
        mem.write(to_write_set(&ops)).expect("mem write");
        model.apply(&ops);
        if step % 50 == 0 {
            rocks = RocksLogStore::open({
                let p = rocks.path().to_path_buf();
                drop(rocks);
                p
            })
            .expect("reopen");
        }
    }
    model.check(&mem).expect("mem matches model");
    model.check(&rocks).expect("rocks matches model");
}
