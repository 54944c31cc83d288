import Etcd
import Foundation
import KilnCore

/// Phase 1, the floor: etcd's own put-to-watch-event latency on this machine, which any
/// dispatch through etcd pays at least twice (the queue entry reaches the dispatcher, the
/// task reaches the agent).
enum FloorPhase {
    struct Result: Sendable {
        let samples: Samples
        let report: PhaseReport
    }

    /// On a fresh etcd with nothing else running: put a key through the JSON gateway
    /// (`/v3/kv/put`), time until a watch on it (opened beforehand, `/v3/watch`) delivers that
    /// put; one at a time. The first `warmup` samples are dropped.
    static func run(rig: BenchRig, samples count: Int, warmup: Int = 20) async throws -> Result {
        say("== floor: etcd put → watch event, \(count) sequential samples on a fresh etcd")
        let server = try await rig.startEtcd("floor")
        defer { server.stop() }
        let etcd = EtcdClient(endpoint: server.endpoint)
        let samples = try await measure(etcd, count: count, warmup: warmup)
        var report = PhaseReport("Floor: etcd put → watch event")
        report.setup = ["fresh etcd 3.4 (one member, data on this machine's disk), nothing else running",
                        "one key; each sample: PUT /v3/kv/put, time until the watch (POST /v3/watch, opened before) delivers it; sequential; \(warmup) warm-up samples dropped",
                        "times on this process's monotonic clock"]
        report.figures = [
            Figure("put → watch event p50", Fmt.ms(samples.p50)),
            Figure("put → watch event p99", Fmt.ms(samples.p99)),
            Figure("max", Fmt.ms(samples.max)),
        ]
        report.notes = ["n = \(samples.count)"]
        say(report.printed())
        return Result(samples: samples, report: report)
    }

    static func measure(_ etcd: EtcdClient, count: Int, warmup: Int) async throws -> Samples {
        let key = "/bench/floor"
        let start = try await etcd.status()
        var events = etcd.watch(key: key, fromRevision: start + 1).makeAsyncIterator()
        var samples = Samples()
        let clock = ContinuousClock()
        for i in 0..<(warmup + count) {
            let value = "sample-\(i)"
            let t0 = clock.now
            async let written = etcd.put(key, value)
            var seen = false
            while !seen {
                guard let update = try await events.next() else { throw CancellationError() }
                if case .events(let list, _) = update, list.contains(where: { $0.kind == .put && $0.kv.string == value }) { seen = true }
            }
            let t1 = clock.now
            _ = try await written
            if i >= warmup { samples.add((t1 - t0).inSeconds * 1000) }
        }
        return samples
    }
}
