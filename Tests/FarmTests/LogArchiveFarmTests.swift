import Etcd
import FarmHarness
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import RegistryAuth
import Scheduler
import Testing

/// Logs leaving etcd in a farm of real processes: `kiln scheduler` with `--log-archive` and
/// `kiln agent --simulate`.
@Suite("Log archive (real processes)", .serialized)
struct LogArchiveFarmTests {
    @Test("builds end while the archive is down: their chunks stay and the API serves them; once it is back they leave etcd and the API, kiln logs and kiln logs -f serve the same bytes")
    func archiveDownThenBack() async throws {
        let farm = try await ProcessFarm("log-archive")
        // A file where the archive's folder should be: every store fails (as root, modes would not).
        try Data("not a folder".utf8).write(to: farm.logArchive)
        try await farm.startScheduler("sched-1", leaderTTL: 5)
        try await farm.startScheduler("sched-2", leaderTTL: 5)
        try await farm.startAgent("agent-1", capacity: 4, ttl: 10, simulate: "0.2-0.5")
        let projects = try await farm.addProjects(2)
        var ids: [String] = []
        for i in 0..<8 { ids.append(try await farm.store.enqueue(project: projects[i % 2], request: BuildRequest()).id) }
        let ended = try await farm.waitForAll(Set(ids), timeout: .seconds(60))
        #expect(ended.values.allSatisfy { $0.status == .succeeded }, "builds waited for the archive or failed: \(ended.values.map(\.status))")

        // The leader tried and said why; the chunks are all still there.
        let leader = try #require(try await farm.leader(asking: "sched-1"))
        let leaderProcess = try #require(farm.schedulers[leader]).process
        try await leaderProcess.waitUntilReady(timeout: 30) { leaderProcess.logTail(lines: 400).contains("the log archive cannot store") }
        #expect(leaderProcess.logTail(lines: 400).contains(farm.logArchive.path), "\(leaderProcess.logTail(lines: 20))")
        for id in ids { #expect(try await farm.etcd.range(prefix: farm.keys.logs(of: id)).kvs.count > 0, "build \(id)'s chunks left etcd with the archive down") }
        let before = try await etcdBytes(farm.etcd, under: farm.keys.logs)
        var served: [String: String] = [:]
        for id in ids {
            let reply = try await httpRequest(.GET, "\(farm.schedulers["sched-2"]!.api)/api/v1/builds/\(id)/log", headers: farm.adminHeaders)
            #expect(reply.status == 200 && reply.body.contains("simulated build succeeded"), "\(reply.body)")
            served[id] = reply.body
        }

        // The folder comes back: the leader's next try (5 s after the first) moves every log.
        try FileManager.default.removeItem(at: farm.logArchive)
        try await waitUntil(farm.etcd, prefix: farm.keys.logs, timeout: .seconds(60)) { $0.isEmpty }
        let after = try await etcdBytes(farm.etcd, under: farm.keys.logs)
        #expect(after.bytes == 0 && after.keys == 0)
        for id in ids {
            let record = try await farm.store.build(id)
            #expect(record.logArchive?.lines == served[id]!.split(separator: "\n", omittingEmptySubsequences: false).count - 1, "\(record.logArchive.map { "\($0)" } ?? "no mark")")
            for scheduler in ["sched-1", "sched-2"] {
                let reply = try await httpRequest(.GET, "\(farm.schedulers[scheduler]!.api)/api/v1/builds/\(id)/log", headers: farm.adminHeaders)
                #expect(reply.status == 200 && reply.body == served[id], "\(scheduler) served build \(id)'s archived log differently:\n\(reply.body)\n---\n\(served[id]!)")
            }
        }
        // The CLI, plain and followed (an ended build's follow prints the log and ends).
        let environment = ProcessInfo.processInfo.environment.merging(["KILN_TOKEN": farm.adminToken]) { $1 }
        let api = farm.schedulers["sched-1"]!.api
        for arguments in [["logs", ids[0]], ["logs", "-f", ids[0]]] {
            let (status, output) = try await Spawn.runDetached(farm.kiln, arguments + ["--api", api], environment: environment)
            #expect(status == 0 && String(decoding: output, as: UTF8.self) == served[ids[0]], "kiln \(arguments.joined(separator: " ")): \(String(decoding: output, as: UTF8.self))")
        }
        print("log archive farm: \(ids.count) builds held \(before.bytes) bytes in \(before.keys) keys under \(farm.keys.logs) before, \(after.bytes) after; \(before.bytes / ids.count) bytes per build")
    }

    @Test("--log-archive registry: two schedulers that share no folder both serve every archived log from the registry; with the registry down at first the logs wait in etcd and move once it is up; the options are checked at start")
    func registryArchive() async throws {
        let farm = try await ProcessFarm("log-archive-registry")
        let key = TokenSigningKey.generate()
        let keyFile = farm.dir.appendingPathComponent("credentials/registry-signing-key.pem").path
        try CredentialFile.write(key.privateKeyPEM, to: keyFile)
        let bundle = farm.dir.appendingPathComponent("registry-cert.pem")
        try CredentialFile.write(try key.certificatePEM(), to: bundle.path)
        let auth = RegistryServer.TokenAuth(realm: "http://127.0.0.1:9/auth/token", rootCertBundle: bundle)
        let first = try await RegistryServer.start(root: farm.dir.appendingPathComponent("registry"), auth: auth)
        let port = first.port
        // Down when the schedulers start: a warning, not a refusal.
        first.stop()
        let options = ["--leader-ttl", "5", "--log-archive", "registry", "--registry-url", first.url, "--registry-signing-key", keyFile]
        // Each scheduler its own data dir: nothing on disk in common.
        try await farm.startScheduler("sched-1", options: options + ["--data-dir", farm.dir.appendingPathComponent("sched-1").path])
        try await farm.startScheduler("sched-2", options: options + ["--data-dir", farm.dir.appendingPathComponent("sched-2").path])
        try await farm.startAgent("agent-1", capacity: 4, ttl: 10, simulate: "0.2-0.5")
        let projects = try await farm.addProjects(2)
        var ids: [String] = []
        for i in 0..<6 { ids.append(try await farm.store.enqueue(project: projects[i % 2], request: BuildRequest()).id) }
        let ended = try await farm.waitForAll(Set(ids), timeout: .seconds(60))
        #expect(ended.values.allSatisfy { $0.status == .succeeded }, "\(ended.values.map(\.status))")
        let leader = try #require(try await farm.leader(asking: "sched-1"))
        let leaderProcess = try #require(farm.schedulers[leader]).process
        #expect(leaderProcess.logTail(lines: 400).contains("does not answer now"), "no start warning: \(leaderProcess.logTail(lines: 20))")
        try await leaderProcess.waitUntilReady(timeout: 30) { leaderProcess.logTail(lines: 400).contains("the log archive cannot store") }
        var served: [String: String] = [:]
        for id in ids {
            #expect(try await farm.etcd.range(prefix: farm.keys.logs(of: id)).kvs.count > 0, "build \(id)'s chunks left etcd with the registry down")
            let reply = try await httpRequest(.GET, "\(farm.schedulers["sched-2"]!.api)/api/v1/builds/\(id)/log", headers: farm.adminHeaders)
            #expect(reply.status == 200 && reply.body.contains("simulated build succeeded"), "\(reply.body)")
            served[id] = reply.body
        }

        // The registry comes back on its storage: the leader's next try moves every log.
        let registry = try await RegistryServer.start(root: farm.dir.appendingPathComponent("registry"), port: port, auth: auth)
        defer { registry.stop() }
        try await waitUntil(farm.etcd, prefix: farm.keys.logs, timeout: .seconds(120)) { $0.isEmpty }
        for id in ids {
            #expect(try await farm.store.build(id).logArchive != nil)
            for scheduler in ["sched-1", "sched-2"] {
                let reply = try await httpRequest(.GET, "\(farm.schedulers[scheduler]!.api)/api/v1/builds/\(id)/log", headers: farm.adminHeaders)
                #expect(reply.status == 200 && reply.body == served[id], "\(scheduler) served build \(id)'s archived log differently:\n\(reply.body)")
            }
        }
        // In the registry, not in any folder.
        let archive = try RegistryLogArchive(registry: .init(url: registry.url), tokens: .init(signingKey: key))
        #expect(try await archive.read(build: ids[0]) != nil)
        for folder in [farm.logArchive, farm.dir.appendingPathComponent("sched-1/log-archive"), farm.dir.appendingPathComponent("sched-2/log-archive")] {
            #expect(!FileManager.default.fileExists(atPath: folder.path), "\(folder.path)")
        }

        // The options, refused at start with what to do.
        for (arguments, words) in [
            (["--log-archive", "registry"], ["--registry-url"]),
            (["--log-archive", "registry", "--registry-url", registry.url], ["--registry-signing-key"]),
            (["--log-archive", "registry:logs/archive", "--registry-url", registry.url, "--registry-signing-key", keyFile], ["must begin with 'kiln_'"]),
        ] {
            let r = try await SecretsCLITests.kiln(farm, ["scheduler", "--admin-token-file", farm.adminTokenFile] + arguments)
            #expect(r.status != 0 && words.allSatisfy { r.output.contains($0) }, "\(arguments): \(r.output)")
        }
    }
}
