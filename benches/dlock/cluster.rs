//! Scaling out: aggregate pipelined ACQUIRE and RELEASE rates on a local Redis Cluster (3
//! masters + 3 replicas, `redis-benchmark --cluster`) against the single server, same
//! commands, same keyspace. On one machine every node shares its cores with the others and
//! with the benchmark client: the figure shows the cluster's overhead here, not what
//! separate hosts would give.

use super::common::cluster::Cluster;
use super::common::{Connection, Server, cmd};
use super::report::{Figure, median};
use super::throughput::run_redis_benchmark;
use super::{OWNER, Sizes, TTL_MS, flushall};

pub fn cluster(server: &Server, c: &mut Connection, sizes: &Sizes, figures: &mut Vec<Figure>) {
    let cluster = Cluster::start();
    let ttl = TTL_MS.to_string();
    // `{tag}` is where redis-benchmark puts a hash tag of the node a connection talks to; on
    // the single server it is just part of the key.
    let commands: [(&str, Vec<&str>); 2] = [
        (
            "ACQUIRE",
            vec!["DLOCK.ACQUIRE", "lock:{tag}:__rand_int__", OWNER, &ttl],
        ),
        (
            "RELEASE",
            vec!["DLOCK.RELEASE", "lock:{tag}:__rand_int__", OWNER],
        ),
    ];
    let mut single: Vec<Vec<f64>> = vec![vec![]; commands.len()];
    let mut clustered: Vec<Vec<f64>> = vec![vec![]; commands.len()];
    for _ in 0..sizes.rounds {
        for (on_cluster, results) in [(false, &mut single), (true, &mut clustered)] {
            if on_cluster {
                for node in cluster.nodes.iter().take(3) {
                    let mut n = node.client();
                    let _: () = cmd("FLUSHALL").query(&mut n).expect("FLUSHALL");
                }
            } else {
                flushall(c);
            }
            let port = if on_cluster {
                cluster.nodes[0].port
            } else {
                server.port
            };
            // ACQUIRE fills the keyspace that RELEASE then empties.
            for ((_, words), result) in commands.iter().zip(results.iter_mut()) {
                result.push(run_redis_benchmark(
                    port,
                    on_cluster,
                    sizes.keyspace,
                    32,
                    sizes.requests_pipelined,
                    words,
                ));
            }
        }
    }
    for ((name, _), (one, many)) in commands.iter().zip(single.into_iter().zip(clustered)) {
        figures.push(Figure {
            name: format!(
                "{name} on a 3-master cluster (with replicas), pipelined x32 (ops/s), vs one server"
            ),
            unit: "ops/s",
            dlock: median(many),
            baseline: Some(median(one)),
            target: None,
            others: vec![],
        });
    }
}
