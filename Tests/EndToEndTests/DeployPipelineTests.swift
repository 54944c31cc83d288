import Deploy
import Scheduler
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
import Synchronization
import Testing

/// The deploy pipeline with every real part: a push builds, the image is deployed in two
/// cells (two podman API endpoints), nginx (driven by an lb-agent) serves it, the next
/// version takes over under a steady client, and what must not happen does not.
// Nested in the end-to-end suite, which runs one farm at a time: farms share one podman
// storage (and its API service's pid file), and the deploy tests one for their cells.
extension EndToEndTests {
@Suite struct DeployPipelineTests {
    static let group = "e2e"
    static let domain = "demo.localhost"

    static func pipeline(deploy extra: [String: JSONValue] = [:], cells: [String]? = nil) -> [PipelineStep] {
        var d: [String: JSONValue] = ["app": .string("demo"), "port": .number(8080), "replicas": .number(1), "healthTimeoutSeconds": .number(90)]
        if let cells { d["cells"] = .array(cells.map { .string($0) }) }
        for (k, v) in extra { d[k] = v }
        return [
            PipelineStep(plugin: "deploy", settings: d),
            PipelineStep(plugin: "lb", settings: ["group": .string(group), "domain": .string(domain), "app": .string("demo")]),
            PipelineStep(plugin: "retire", settings: ["app": .string("demo"), "drainSeconds": .number(1)]),
        ]
    }

    @Test("a push deploys in two cells behind nginx; the next version takes over with no failed request; an unhealthy version never joins; roll back; an instance that stops leaves the domain and comes back; a deleted cell, a taken port and an unpullable image fail the deploy and leave the live version serving")
    func deployPipeline() async throws {
        try await withFarm(deploy: true) { farm in
            try await farm.withDeployTargets(group: Self.group) { nginx in
                func page() async throws -> String {
                    let r = try await httpRequest(.GET, "http://\(nginx)/", headers: [("Host", Self.domain), ("Connection", "close")], timeout: .seconds(10))
                    guard r.status == 200 else { throw FarmError("nginx answered \(r.status): \(r.body)") }
                    return r.body
                }
                // The first deploy sets memory, CPU and an environment variable; the later steps
                // do not, so each new version takes them from the one before.
                try await farm.saveProject(pipeline: Self.pipeline(deploy: ["memoryMB": .number(300), "cpu": .number(0.5), "env": .object(["KILN_GREETING": .string("hello")])]))

                // 1. First version: built, deployed in cells a and b, served through nginx.
                let b1 = try await farm.deployed(try await farm.startBuild().id)
                #expect(b1.deploy?.status == .succeeded, "\(b1.deploy?.error ?? "")")
                #expect(b1.deploy?.steps.map(\.status) == [.succeeded, .succeeded, .succeeded])
                #expect(try await page().contains("kiln-demo version 1.0.0"))
                var app = try await farm.appStatus()
                let v1 = try #require(app.app.live)
                #expect(v1.number == 1 && v1.build == b1.id)
                // Deployed by digest, never by the tag (which may move); the tag is kept for people.
                let pinned = try #require(b1.imageByDigest)
                #expect(v1.image == pinned && pinned.contains("/demo@sha256:") && v1.tag == b1.tag, "\(v1.image)")
                let v1Cells: [String] = v1.instances.map(\.cell).sorted()
                #expect(v1Cells == ["a", "b"], "one instance in each cell")
                #expect(v1.instances.allSatisfy { $0.healthy })
                #expect(app.domains.first?.agents.first?.current == true)
                #expect(try await farm.log(b1.id).contains("==> lb succeeded"))

                #expect(try farm.cellsPodman(["inspect", "--format", "{{.ImageName}}", v1.instances[0].id]).trimmingCharacters(in: .whitespacesAndNewlines) == pinned)
                let inspected = try farm.cellsPodman(["inspect", "--format", "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{range .Config.Env}}{{.}} {{end}}", v1.instances[0].id])
                #expect(inspected.hasPrefix("314572800 500000000 "), "\(inspected)")
                #expect(inspected.contains("KILN_GREETING=hello"), "\(inspected)")
                // The cells pulled it into their own storage; builds never see it in theirs.
                #expect(try farm.cellsPodman(["image", "exists", pinned]).isEmpty)
                #expect(try farm.infra.podman.podmanCommand(["image", "exists", pinned]).status == 1, "the deployed image is in the builders' storage")
                try await farm.saveProject(pipeline: Self.pipeline())

                // 2. Second version while a client requests the page without pause.
                try farm.infra.publishDemo(edit: { dir in
                    let pom = dir.appendingPathComponent("pom.xml")
                    let text = try String(contentsOf: pom, encoding: .utf8)
                    try text.replacingOccurrences(of: "<version>1.0.0</version>", with: "<version>2.0.0</version>").write(to: pom, atomically: true, encoding: .utf8)
                })
                let stats = Mutex((ok: 0, failed: [String](), sawV1: false, sawV2: false))
                let client = Task {
                    while !Task.isCancelled {
                        do {
                            let body = try await page()
                            stats.withLock { s in
                                s.ok += 1
                                if body.contains("version 1.0.0") { s.sawV1 = true }
                                if body.contains("version 2.0.0") { s.sawV2 = true }
                            }
                        } catch {
                            if Task.isCancelled { break }  // the request the test itself cut short
                            stats.withLock { $0.failed.append("\(error)") }
                        }
                    }
                }
                let b2 = try await farm.deployed(try await farm.startBuild().id)
                try await Task.sleep(for: .milliseconds(500))
                client.cancel()
                _ = await client.value
                let s = stats.withLock { $0 }
                #expect(b2.deploy?.status == .succeeded, "\(b2.deploy?.error ?? "")")
                #expect(s.failed.isEmpty, "\(s.failed.count) of \(s.ok + s.failed.count) requests failed: \(s.failed.prefix(3))")
                #expect(s.sawV1 && s.sawV2 && s.ok > 50, "\(s)")
                #expect(try await page().contains("kiln-demo version 2.0.0"))
                app = try await farm.appStatus()
                #expect(app.app.version(1)?.state == .retired)
                #expect(app.app.live?.number == 2)
                #expect(app.app.live?.settings == v1.settings, "v2 took v1's replicas, CPU, memory, env and health path")
                #expect(try await farm.containers(version: 1).isEmpty, "the retired version's containers are removed")

                // 3. A version whose health check never passes never joins; v2 keeps serving.
                try await farm.saveProject(pipeline: Self.pipeline(deploy: ["healthPath": .string("/nope"), "healthTimeoutSeconds": .number(4)]))
                let unhealthy = try await farm.redeploy(b2.id)
                #expect(unhealthy.deploy?.status == .failed)
                #expect(unhealthy.status == .succeeded, "the build stays succeeded")
                #expect(unhealthy.deploy?.steps.map(\.status) == [.failed, .skipped, .skipped])
                #expect(unhealthy.deploy?.steps.first?.error?.contains("0 of 2 instances passed the health check at /nope") == true, "\(unhealthy.deploy?.steps.first?.error ?? "")")
                #expect(try await page().contains("kiln-demo version 2.0.0"))
                app = try await farm.appStatus()
                #expect(app.app.version(3)?.state == .failed)
                #expect(app.domains.first?.servers.sorted() == app.app.version(2)?.instances.map(\.address).sorted())
                #expect(try await farm.containers(version: 3).isEmpty)

                // 4. Roll back to the first build's image: a new version, v2 retired. First the
                //    first build's tag is moved onto the second build's image (admin pushes it):
                //    the roll back still runs the first build's image, by its digest.
                let b1Tag = try #require(b1.image)
                try farm.cellsPodman(["tag", try #require(b2.imageByDigest), b1Tag])
                try farm.cellsPodman(["push", "--tls-verify=false", "--authfile", try farm.adminAuthFile(), b1Tag])
                try farm.cellsPodman(["rmi", b1Tag])
                try await farm.saveProject(pipeline: Self.pipeline())
                let back = try await farm.redeploy(b1.id)
                #expect(back.deploy?.status == .succeeded, "\(back.deploy?.error ?? "")")
                #expect(try await page().contains("kiln-demo version 1.0.0"), "the roll back ran the moved tag")
                app = try await farm.appStatus()
                #expect(app.app.live?.number == 4 && app.app.live?.image == pinned)
                #expect(app.app.version(2)?.state == .retired)

                // 5. Discovery: an instance that stops leaves the domain, and comes back once it
                //    passes its health check again.
                let v4 = try #require(app.app.live)
                let victim = v4.instances[0], survivor = v4.instances[1]
                try farm.cellsPodman(["stop", "-t", "1", victim.id])
                try await farm.waitForDomain(Self.group, Self.domain, timeout: .seconds(60)) { $0.servers.map(\.address) == [survivor.address] }
                #expect(try await page().contains("kiln-demo version 1.0.0"))
                app = try await farm.appStatus()
                #expect(app.app.live?.instances.first { $0.id == victim.id }?.healthy == false)
                try farm.cellsPodman(["start", victim.id])
                // The demo's JVM starts again and passes its health check: 20-40 s on 2 cores
                // under a full run's load (30 s was not enough once).
                try await farm.waitForDomain(Self.group, Self.domain, timeout: .seconds(120)) { Set($0.servers.map(\.address)) == Set(v4.instances.map(\.address)) }
                #expect(try await farm.appStatus().app.live?.instances.allSatisfy { $0.healthy } == true)
                // Both changes are in the app's events (its console page shows them), by discovery.
                try await waitUntil(farm.etcd, prefix: farm.keys.activity(.app, "demo")) { kvs in kvs.contains { $0.string.contains("\(victim.name) healthy again") } }
                let events = try KilnJSON.decode([ActivityEntry].self, from: try await farm.request(.GET, "/api/v1/apps/demo/activity").body)
                let health = events.filter { $0.action == "health changed" && $0.user == "discovery" }.compactMap(\.detail)
                #expect(health.contains { $0.contains("\(victim.name) unhealthy") } && health.contains { $0.contains("\(victim.name) healthy again") }, "\(health)")

                // 6. Bad input: each fails the deploy with the reason; v4 keeps serving.
                try await farm.saveProject(pipeline: Self.pipeline(cells: ["a", "gone"]))
                let deletedCell = try await farm.redeploy(b1.id)
                #expect(deletedCell.deploy?.steps.first?.error?.contains("cell gone does not exist") == true, "\(deletedCell.deploy?.error ?? "")")

                let holder = try PortHolder()
                try await farm.saveCell(Cell(name: "b", endpoint: "unix://\(farm.cellSocket("b"))", firstPort: holder.port, lastPort: holder.port))
                try await farm.saveProject(pipeline: Self.pipeline())
                let taken = try await farm.redeploy(b1.id)
                #expect(taken.deploy?.steps.first?.error?.contains("port \(holder.port) is already taken") == true, "\(taken.deploy?.error ?? "")")
                holder.close()
                try await farm.saveCell(farm.cell("b"))

                let b2Pinned = try #require(b2.imageByDigest)
                try farm.deleteManifest(project: "demo", digest: try #require(b2.digest))
                try farm.cellsPodman(["rmi", "-f", b2Pinned])
                let unpullable = try await farm.redeploy(b2.id)
                #expect(unpullable.deploy?.steps.first?.error?.contains("cannot pull") == true, "\(unpullable.deploy?.error ?? "")")

                #expect(try await page().contains("kiln-demo version 1.0.0"))
                app = try await farm.appStatus()
                #expect(app.app.live?.number == 4)
                // The unhealthy one, the taken port, the unpullable image; the deleted cell is
                // refused before a version is made.
                #expect(app.app.versions.map(\.state) == [.retired, .retired, .failed, .live, .failed, .failed])
                for v in app.app.versions where v.state == .failed { #expect(try await farm.containers(version: v.number).isEmpty, "v\(v.number)") }
            }
        }
    }
}

}

/// Holds a TCP port on 127.0.0.1 (a listening socket) until closed.
final class PortHolder: Sendable {
    let port: Int
    private let fd: Int32

    init() throws {
        port = try FreePort.next()
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 4) == 0 else { throw FarmError("cannot hold port \(port): errno \(errno)") }
    }

    func close() { _ = Glibc.close(fd) }
}

extension Farm {
    func cellSocket(_ name: String) -> String { Infrastructure.cellSocket(root: Farm.cellsRoot, name: name) }

    /// Cells a and b: two podman API services on a storage of their own, with host port
    /// ranges of their own, below Linux's ephemeral ports (32768 up), which outgoing
    /// connections take and a published port then cannot.
    func cell(_ name: String) -> Cell {
        let base = 21000 + (Int(infra.etcd.endpoint.split(separator: ":").last ?? "0") ?? 0) % 100 * 100
        return Cell(name: name, endpoint: "unix://\(cellSocket(name))", firstPort: base + (name == "a" ? 0 : 50), lastPort: base + (name == "a" ? 49 : 99))
    }

    func saveCell(_ cell: Cell) async throws {
        let r = try await request(.PUT, "/api/v1/cells/\(cell.name)", body: try KilnJSON.encode(cell))
        guard r.status == 200 || r.status == 201 else { throw FarmError("saving cell \(cell.name): \(r.status) \(r.body)") }
    }

    /// Starts cells a and b and an lb-agent (with its nginx) for `group`, runs `body` with
    /// nginx's address, then removes every app container and stops them all.
    func withDeployTargets(group: String, _ body: (String) async throws -> Void) async throws {
        let services = try await Infrastructure.startCells(["a", "b"], root: Farm.cellsRoot)
        let listen = "127.0.0.1:\(try FreePort.next())"
        let lbDir = dataDir.appendingPathComponent("lb")
        // The lb-agent as its own etcd user, as `kiln up` runs it.
        let lbEtcd = try await infra.etcdUsers.client(.lbAgent(group: group, id: "lb-1"))
        let agent = LBAgent(configuration: LBAgentConfiguration(group: group, id: "lb-1", listen: listen, directory: lbDir, leaseTTL: 4), etcd: lbEtcd)
        let lbTask = Task { try await agent.run() }
        func cleanup() async {
            let docker = LocalDeployer()
            for c in ["a", "b"] {
                let byVersion = (try? await docker.instances(of: "demo", in: cell(c))) ?? [:]
                for (v, instances) in byVersion {
                    try? await docker.stop(instances, of: VersionSpec(app: "demo", version: v, image: "", settings: .init(port: 8080)), in: cell(c))
                }
            }
            lbTask.cancel()
            _ = try? await lbTask.value
            for s in services { s.stop() }
        }
        do {
            try await saveCell(cell("a"))
            try await saveCell(cell("b"))
            try await waitUntil(etcd, prefix: SLBKeys().agents(group), timeout: .seconds(20)) { !$0.isEmpty }
            try await body(listen)
        } catch {
            await cleanup()
            throw error
        }
        await cleanup()
    }

    func saveProject(pipeline: [PipelineStep]) async throws {
        let p = Project(name: "demo", repository: infra.repositoryURL("demo"), buildImage: Infrastructure.buildImage,
                        buildCommand: "mvn -B -q package -DforkCount=0", pipeline: pipeline)
        let r = try await request(.POST, "/api/v1/projects", body: try KilnJSON.encode(p))
        guard r.status == 200 || r.status == 201 else { throw FarmError("saving the project: \(r.status) \(r.body)") }
    }

    /// Waits until the build has ended and so has its pipeline run.
    func deployed(_ id: String, timeout: Duration = .seconds(420)) async throws -> Build {
        try await waitForBuild(id, timeout: timeout) { b in
            b.status.isFinal && (b.status != .succeeded || b.deploy?.status.isFinal == true)
        }
    }

    /// Runs the project's pipeline again for a build and waits for the run to end.
    func redeploy(_ id: String) async throws -> Build {
        let r = try await request(.POST, "/api/v1/builds/\(id)/deploy")
        guard r.status == 202 else { throw FarmError("deploy \(id): \(r.status) \(r.body)") }
        let run = try KilnJSON.decode(Build.self, from: r.body).deploy!.run
        return try await waitForBuild(id, timeout: .seconds(300)) { $0.deploy?.run == run && $0.deploy?.status.isFinal == true }
    }

    /// Waits (on an etcd watch) until the domain's value satisfies `condition`.
    func waitForDomain(_ group: String, _ domain: String, timeout: Duration = .seconds(30), _ condition: @escaping @Sendable (SLBDomain) -> Bool) async throws {
        let key = SLBKeys().domain(group: group, domain)
        try await waitUntil(etcd, prefix: key, timeout: timeout) { kvs in
            kvs.first { $0.key == key }.flatMap { try? KilnJSON.decode(SLBDomain.self, from: $0.value) }.map(condition) ?? false
        }
    }

    func appStatus() async throws -> AppStatus {
        let r = try await request(.GET, "/api/v1/apps/demo")
        guard r.status == 200 else { throw FarmError("GET /api/v1/apps/demo: \(r.status) \(r.body)") }
        return try KilnJSON.decode(AppStatus.self, from: r.body)
    }

    /// The demo app's containers of one version, in both cells.
    func containers(version: Int) async throws -> [Instance] {
        var found: [Instance] = []
        for c in ["a", "b"] { found += try await LocalDeployer().instances(of: "demo", in: cell(c))[version] ?? [] }
        return found
    }

    /// Deletes a manifest from the registry's storage (its revision link), as if it had been
    /// deleted or never pushed: a pull by its digest then fails.
    func deleteManifest(project: String, digest: String) throws {
        let hex = digest.replacingOccurrences(of: "sha256:", with: "")
        let dir = infra.registry.root.appendingPathComponent("data/docker/registry/v2/repositories/\(project)/_manifests/revisions/sha256/\(hex)")
        try FileManager.default.removeItem(at: dir)
    }
}
