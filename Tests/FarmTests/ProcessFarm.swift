import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Scheduler
#if canImport(Glibc)
import Glibc
#endif

/// A farm of real processes for the fault tests: one etcd, `kiln scheduler` processes and
/// `kiln agent --simulate` processes (real registration, leases, task watches and guarded
/// writes; the build steps are a wait). Everything is stopped by PID when it goes away.
final class ProcessFarm: @unchecked Sendable {
    let dir: TempDir
    let etcdServer: EtcdServer
    let etcd: EtcdClient
    let store: SchedulerStore
    var schedulers: [String: (process: ManagedProcess, api: String)] = [:]
    var agents: [String: ManagedProcess] = [:]

    /// The `kiln` executable built beside this test bundle (`swift build --build-tests`).
    static var kiln: String {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return exe.deletingLastPathComponent().appendingPathComponent("kiln").path
    }

    init(_ label: String) async throws {
        guard FileManager.default.isExecutableFile(atPath: ProcessFarm.kiln) else {
            throw FarmError("\(ProcessFarm.kiln) is missing: build it first (swift build --build-tests builds it with the tests)")
        }
        dir = try TempDir(label)
        etcdServer = try await EtcdServer.start(dataDir: dir.path("etcd"))
        etcd = EtcdClient(endpoint: etcdServer.endpoint)
        store = SchedulerStore(etcd: etcd)
    }

    deinit {
        for s in schedulers.values { s.process.killNow() }
        for a in agents.values { a.killNow() }
        etcdServer.kill()
    }

    func startScheduler(_ id: String, leaderTTL: Int = 2, maxAttempts: Int = 3) async throws {
        let port = try FreePort.next()
        let p = try ManagedProcess(
            name: id, executable: ProcessFarm.kiln,
            arguments: ["scheduler", "--listen", "127.0.0.1:\(port)", "--etcd", etcdServer.endpoint, "--id", id,
                        "--leader-ttl", String(leaderTTL), "--max-attempts", String(maxAttempts), "--log-level", "info"],
            logFile: dir.path("logs/\(id).log"))
        let api = "http://127.0.0.1:\(port)"
        try await p.waitUntilReady(timeout: 30) { (try? await httpRequest(.GET, "\(api)/api/v1/health").status) == 200 }
        schedulers[id] = (p, api)
    }

    func startAgent(_ id: String, capacity: Int = 2, ttl: Int = 3, simulate: String = "0.2-0.6") async throws {
        let p = try ManagedProcess(
            name: id, executable: ProcessFarm.kiln,
            arguments: ["agent", "--id", id, "--capacity", String(capacity), "--ttl", String(ttl), "--simulate", simulate,
                        "--data-dir", dir.path("agents/\(id)").path, "--etcd", etcdServer.endpoint, "--log-level", "info"],
            logFile: dir.path("logs/\(id).log"))
        agents[id] = p
        let key = store.keys.agent(id)
        try await waitUntil(etcd, prefix: key, timeout: .seconds(30)) { kvs in kvs.contains { $0.key == key } }
    }

    /// The scheduler that leads now, as the API of `asking` reports it.
    func leader(asking: String) async throws -> String? {
        let reply = try await httpRequest(.GET, "\(schedulers[asking]!.api)/api/v1/scheduler")
        return reply.json?["leader"] as? String
    }

    func addProjects(_ count: Int) async throws -> [String] {
        var names: [String] = []
        for i in 0..<count {
            let name = "project-\(i)"
            try await store.saveProject(Project(name: name, repository: "http://127.0.0.1:1/\(name).git", buildImage: "a:1", buildCommand: "make"))
            names.append(name)
        }
        return names
    }

    /// Every build record, by id.
    func builds() async throws -> [String: Build] {
        var all: [String: Build] = [:]
        for kv in try await etcd.range(prefix: store.keys.builds).kvs {
            if let b = try? KilnJSON.decode(Build.self, from: kv.value) { all[b.id] = b }
        }
        return all
    }

    /// Waits until every build in `ids` has ended.
    func waitForAll(_ ids: Set<String>, timeout: Duration) async throws -> [String: Build] {
        let keys = store.keys
        do {
            try await waitUntil(etcd, prefix: keys.builds, timeout: timeout) { kvs in
                let ended = kvs.compactMap { try? KilnJSON.decode(Build.self, from: $0.value) }.filter { ids.contains($0.id) && $0.status.isFinal }
                return ended.count == ids.count
            }
        } catch let error as TimedOut {
            // Say which builds did not end, where they stand, and what the processes said.
            let open = try await builds().values.filter { ids.contains($0.id) && !$0.status.isFinal }
            let tasks = try await etcd.range(prefix: keys.tasks).kvs.map(\.key)
            let queue = try await etcd.range(prefix: keys.queue).kvs.map(\.key)
            throw FarmError("""
                \(error): \(open.count) of \(ids.count) builds not ended: \(open.prefix(10).map { "\($0.id) \($0.status.rawValue) agent=\($0.agent ?? "-") attempt=\($0.attempt)" })
                tasks: \(tasks.prefix(10)); queue: \(queue.prefix(10))
                \(logs())
                """)
        }
        return try await builds().filter { ids.contains($0.key) }
    }

    /// A description of each process's last log lines, for a failing expectation.
    func logs() -> String {
        (schedulers.map { ($0.key, $0.value.process) } + agents.map { ($0.key, $0.value) })
            .map { "--- \($0.0)\n\($0.1.logTail(lines: 15))" }.joined(separator: "\n")
    }
}

/// Counts, from a watch of `/kiln/tasks/` opened before any build, how many times each
/// build was given to an agent (a task key created), and whether two task keys of one
/// build ever existed at once.
final class AssignmentLog: @unchecked Sendable {
    private let lock = NSLock()
    private var created: [String: Int] = [:]
    private var live: [String: Set<String>] = [:]
    private var overlapped: [String] = []
    private var task: Task<Void, Never>?

    init(etcd: EtcdClient, keys: Keys) async throws {
        let start = try await etcd.range(prefix: keys.tasks).revision
        task = Task {
            do {
                for try await update in etcd.watch(prefix: keys.tasks, fromRevision: start + 1) {
                    guard case .events(let events, _) = update else { continue }
                    for e in events {
                        guard let owner = keys.taskOwner(e.kv.key) else { continue }
                        record(e.kind, key: e.kv.key, build: owner.build, version: e.kv.version)
                    }
                }
            } catch {}
        }
    }

    private func record(_ kind: WatchEvent.Kind, key: String, build: String, version: Int64) {
        lock.lock()
        defer { lock.unlock() }
        switch kind {
        case .put:
            guard version == 1 else { return }  // a cancel mark, not a new assignment
            created[build, default: 0] += 1
            live[build, default: []].insert(key)
            if live[build]!.count > 1 { overlapped.append(build) }
        case .delete:
            live[build]?.remove(key)
        }
    }

    /// Builds that had two task keys at once (a double dispatch).
    var overlaps: [String] {
        lock.lock()
        defer { lock.unlock() }
        return overlapped
    }

    var assignments: [String: Int] {
        lock.lock()
        defer { lock.unlock() }
        return created
    }

    deinit { task?.cancel() }
}
