import Etcd
import Foundation
import KilnCore
import Logging

/// Stands in for the build steps in benchmarks and chaos tests (`kiln agent --simulate`):
/// it does not build. Nothing is fetched, compiled, imaged or pushed, and it needs no
/// container API, registry or Maven mirror.
///
/// Everything around the steps is the real agent's: the task arrives through the same watch,
/// and every write goes through the same `BuildReporter`, guarded by the task key's create
/// revision. The record turns `running` with this agent and `startedAt` (the moment the
/// agent started the build); the runner then waits the simulated duration and finishes
/// `succeeded` (end of log, final record and the task's deletion in one transaction).
/// Once a build of a project started here, the agent holds that project warm
/// (`AgentDisk.warm`), with `--simulate-disk` through the files it writes, without through
/// `DiskKeeper.ran`, so placement by warm caches is measured on the real path.
/// Stopping behaves as with a real build: a requested cancel finishes `cancelled`; a lost
/// task or the agent's shutdown writes nothing more.
struct SimulatedBuildRunner: TaskRunner {
    let agentID: String
    let duration: SimulatedDuration
    let etcd: EtcdClient
    let keys: Keys
    let logger: Logger
    /// How long the reporter tries each write (`AgentConfiguration.etcdRetryLimit`).
    var retryLimit: Duration = .seconds(600)
    /// Takes over the ends it cannot write, as for real builds.
    var pendingEnds: PendingEnds? = nil
    /// Bytes of output each build writes to its log, spread over its duration (`--simulate-log`).
    var logSize: SimulatedSize? = nil
    /// Bytes each build adds to its project's mirror and shared Maven cache, as real files in
    /// `dataDir` that `disk` measures, stamps and evicts like a real build's (`--simulate-disk`).
    var diskSize: SimulatedSize? = nil
    var dataDir: URL? = nil
    var disk: DiskKeeper? = nil

    func prepare() async throws {}

    func run(task: BuildTask, taskKey: String, taskCreateRevision: Int64, control: BuildControl) async {
        // The build starts when its task reaches this agent; reading the record is its work.
        let began = Date()
        let reporter = BuildReporter(task: task, taskKey: taskKey, taskCreateRevision: taskCreateRevision, etcd: etcd, keys: keys, agentLogger: logger,
                                     retryLimit: retryLimit)
        let log = reporter.logger
        // Reads and writes run in tasks of their own: stopping a build cancels its task,
        // which must interrupt only the wait, never a write half done.
        let project = task.project.name
        let usesDisk = disk != nil && diskSize != nil && dataDir != nil
        if usesDisk { await disk?.hold(project) }
        defer {
            if usesDisk, let disk { Task { _ = await disk.release(project) } }
        }
        do {
            guard var build = try await outlivingCancellation({ try await reporter.currentBuild() }) else { return }
            if build.status.isFinal {
                let ending = build
                try await outlivingCancellation { try await reporter.finish(ending) }
                return
            }
            let length = duration.draw()
            let started = ContinuousClock.now
            if control.reason == nil {
                build.start(agent: agentID, attempt: task.attempt, at: began)
                let running = build
                // The first line goes out with the running record, as a real build's would.
                reporter.log("kiln: simulated build \(build.id) of \(task.project.name), attempt \(task.attempt), on agent \(agentID) (kiln agent --simulate \(duration)): nothing is built; waiting \(length.secondsDescription)")
                try await outlivingCancellation { try await reporter.update(running) }
                // The project is warm here from now on, as a real build's mirror is once it
                // starts fetching into it: the agent publishes it, the dispatcher places by it.
                if usesDisk {
                    await disk?.used("mirrors/\(project).git", by: project)
                } else {
                    await disk?.ran(project)
                }
                try await simulateWork(length, build: build.id, project: project, reporter: reporter, control: control)
            }
            switch control.reason {
            case .taskLost:
                throw TaskLostError(build: task.build)  // no longer ours: write nothing, say so
            case .shutdown:
                return  // the build goes back to the queue: write nothing
            case .requested, nil:
                break
            }
            let cancelled = control.reason == .requested
            // No step ran: all four end `skipped`, a success too.
            build.end(cancelled ? .cancelled : .succeeded, error: cancelled ? "cancelled during the simulated build" : nil, at: Date())
            reporter.log("kiln: simulated build \(build.status.rawValue) after \((ContinuousClock.now - started).secondsDescription)")
            let ending = build
            try await outlivingCancellation { try await reporter.finish(ending) }
            log.info("simulated build \(ending.status.rawValue)")
        } catch is TaskLostError {
            log.warning("build taken away from this agent; abandoning it")
        } catch {
            await giveUp(error, reporter: reporter, control: control, pendingEnds: pendingEnds, logger: log)
        }
    }

    /// Waits `length`; meanwhile writes the drawn log output in ten slices (each flushed, so a
    /// follower sees it live) and, at the end, the drawn bytes into the project's folders.
    private func simulateWork(_ length: Duration, build: String, project: String, reporter: BuildReporter, control: BuildControl) async throws {
        let slices = logSize == nil ? 1 : 10
        var left = logSize?.draw() ?? 0
        var line = 0
        for slice in 0..<slices {
            if control.reason != nil { return }
            var bytes = left / (slices - slice)
            left -= bytes
            while bytes > 0 {
                let text = Self.outputLine(line, project: project)
                reporter.output(text)
                bytes -= text.utf8.count + 1
                line += 1
            }
            if logSize != nil { try await outlivingCancellation { try await reporter.flush() } }
            try? await Task.sleep(for: length / slices)
        }
        if control.reason == nil, let diskSize, let dataDir, let disk {
            let total = diskSize.draw()
            for (path, share) in [("mirrors/\(project).git", total / 2), ("mvncache/shared/\(project)", total - total / 2)] {
                let folder = dataDir.appendingPathComponent(path)
                try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
                let file = folder.appendingPathComponent("simulated-\(build)")
                // Bytes written, not a sparse file: the disk's figures count what is allocated.
                FileManager.default.createFile(atPath: file.path, contents: Data(repeating: 0x6b, count: share))
                await disk.used(path, by: project)
            }
        }
    }

    /// A line such as Maven prints, different from the last (so the log compresses as a real one does, not to nothing).
    static func outputLine(_ n: Int, project: String) -> String {
        let group = ["org.apache.maven.plugins", "com.fasterxml.jackson.core", "org.springframework", "io.netty", "org.slf4j"][n % 5]
        return "[INFO] Downloaded from mirror: http://mirror/maven2/\(group.replacingOccurrences(of: ".", with: "/"))/\(project)-lib\(n % 997)/\(n % 13).\(n % 7).\(n % 11)/\(project)-lib\(n % 997)-\(n % 13).\(n % 7).jar (\(n % 1000 + 3) kB at \(Double(n % 97) / 10 + 0.4) MB/s)"
    }
}
