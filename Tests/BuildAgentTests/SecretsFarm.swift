@testable import BuildAgent
import DockerAPI
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
import Synchronization
import Testing

/// Stands in for the scheduler's endpoint `POST /agent/v1/builds/{build}/secrets` (on another
/// branch of issue 13; the lead's end-to-end test covers the agent and the scheduler
/// together): gives every build the same secrets, and counts the calls.
final class FixedSecretsSource: BuildSecretsSource {
    let fixed: BuildSecrets
    private let count = Mutex(0)
    var calls: Int { count.withLock { $0 } }

    init(_ secrets: BuildSecrets) { fixed = secrets }

    func secrets(for build: String) async throws -> BuildSecrets {
        count.withLock { $0 += 1 }
        return fixed
    }
}

/// The real components one agent's builds meet, for the tests of secrets: etcd (no
/// authentication: the agent's etcd role is not what is tested here), podman's API service on
/// a root of its own (this suite may run beside DockerAPITests), the farm's registry
/// (anonymous), a second registry with htpasswd authentication (someone else's: pushTo and
/// private base images), and a git repository the agent fetches over file://. Builds are run
/// by `BuildRunner` itself, from a record and a task key put as the dispatcher puts them.
struct SecretsFarm: Sendable {
    /// Each suite that uses a farm has a root of its own (suites run side by side), named
    /// after it: `/var/tmp/kiln-test/podman-<suite>`.
    static func podmanRoot(_ suite: String) -> URL { URL(fileURLWithPath: "/var/tmp/kiln-test/podman-\(suite)") }
    static let agentID = "secrets-agent"

    let etcd: EtcdClient
    let etcdEndpoint: String
    let docker: DockerClient
    let podman: PodmanService
    let farmRegistry: RegistryServer
    let privateRegistry: RegistryServer
    let registryUser: String
    let registryPassword: String
    let git: GitFixture
    let dataDir: URL
    let keys = Keys()

    var login: RegistryLogin { RegistryLogin(host: privateRegistry.address, username: registryUser, password: registryPassword) }

    static func with(suite: String, _ body: @escaping @Sendable (SecretsFarm) async throws -> Void) async throws {
        try await withEtcd(timeout: .seconds(900)) { server, etcd in
            let dir = try TempDir("secrets-farm")
            let user = "kilnci"
            let password = "pw-" + Secret.random()
            let htpasswd = dir.path("htpasswd")
            try CredentialFile.write(try run("htpasswd", ["-Bbn", user, password]) + "\n", to: htpasswd.path)
            let farmRegistry = try await RegistryServer.start(root: dir.path("farm-registry"))
            let privateRegistry = try await RegistryServer.start(root: dir.path("private-registry"), htpasswd: htpasswd)
            defer {
                farmRegistry.stop()
                privateRegistry.stop()
            }
            let git = try GitFixture()
            try await withPodman(root: podmanRoot(suite), insecureRegistries: [farmRegistry.address, privateRegistry.address], timeout: .seconds(840)) { podman, docker in
                let farm = SecretsFarm(etcd: etcd, etcdEndpoint: server.endpoint, docker: docker, podman: podman, farmRegistry: farmRegistry, privateRegistry: privateRegistry,
                                       registryUser: user, registryPassword: password, git: git, dataDir: dir.path("agent"))
                try await body(farm)
            }
        }
    }

    func configuration() -> AgentConfiguration {
        var c = AgentConfiguration(id: Self.agentID, dataDir: dataDir, etcdEndpoint: etcdEndpoint, dockerSocket: podman.socketPath,
                                   registry: farmRegistry.address, registryInsecure: true, compileNetwork: .none,
                                   allowFileRepos: [git.dir.url], imagePidsCgroup: false,
                                   timeouts: StepTimeouts(fetch: .seconds(60), compile: .seconds(120), image: .seconds(180), push: .seconds(120)))
        // These tests build one commit again with other secrets or disks: every build is real.
        c.reuseBuilds = false
        return c
    }

    func runner(_ source: (any BuildSecretsSource)?) -> BuildRunner {
        let logger = { var l = Logger(label: "secrets-test"); l.logLevel = .critical; return l }()
        return BuildRunner(configuration: configuration(), etcd: etcd, keys: keys, docker: docker, mirrorLocks: KeyedLock(), cacheLocks: KeyedLock(),
                           cacheLayers: CacheLayers(cachesDir: configuration().dataDir.appendingPathComponent("mvncache")),
                           logger: logger, secretsSource: source)
    }

    /// A project of this farm's repository, building in `buildImage`.
    func project(_ command: String, buildImage: String = busyboxImage, dockerfile: String = "Dockerfile", pushTo: [String]? = nil) -> Project {
        var p = Project(name: "secretapp", repository: git.originURL, buildImage: buildImage, buildCommand: command, dockerfile: dockerfile)
        p.pushTo = pushTo
        return p
    }

    /// One build of `project` at `ref` (and `commit`) on a fresh runner, run to its end.
    func build(_ project: Project, ref: String = "main", commit: String? = nil, source: (any BuildSecretsSource)?,
               control: BuildControl = BuildControl()) async throws -> Built {
        let runner = runner(source)
        try await runner.prepare()
        let (id, key, revision, task) = try await assign(project, ref: ref, commit: commit)
        await runner.run(task: task, taskKey: key, taskCreateRevision: revision, control: control)
        return try await result(id)
    }

    /// Puts a build record (assigned) and its task key, as the dispatcher's transaction does.
    func assign(_ project: Project, ref: String, commit: String?) async throws -> (String, String, Int64, BuildTask) {
        var build = Build(id: BuildID.generate(), project: project.name, ref: ref, commit: commit, mvncache: false)
        build.status = .assigned
        build.agent = Self.agentID
        build.attempt = 1
        let task = BuildTask(build: build.id, project: project, ref: ref, commit: commit, tag: nil, mvncache: false, attempt: 1)
        let key = keys.task(agent: Self.agentID, build: build.id)
        _ = try await etcd.put(keys.build(build.id), try KilnJSON.encode(build))
        let revision = try await etcd.put(key, try KilnJSON.encode(task))
        return (build.id, key, revision, task)
    }

    struct Built: Sendable {
        let build: Build
        let log: String
        /// Every key and value in etcd after the build.
        let everything: String
    }

    func result(_ id: String) async throws -> Built {
        let build = try KilnJSON.decode(Build.self, from: try #require(try await etcd.get(keys.build(id))).value)
        let chunks = try await etcd.range(prefix: keys.logs(of: id)).kvs.map { try KilnJSON.decode(LogChunk.self, from: $0.value) }
        let all = try await etcd.range(prefix: "/").kvs.map { "\($0.key)=\($0.string)" }.joined(separator: "\n")
        return Built(build: build, log: chunks.flatMap(\.lines).joined(separator: "\n"), everything: all)
    }

    /// Leftover secret folders of this agent (none once every step has ended).
    var secretFolders: [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: dataDir.appendingPathComponent("secrets").path)) ?? []
    }

    /// An image built from `dockerfile` (context: an empty folder), unless the engine has it.
    func ensureImage(_ name: String, dockerfile: String) async throws {
        if try await docker.imageID(name) != nil { return }
        let context = try TempDir("image-context")
        try dockerfile.write(to: context.path("Dockerfile"), atomically: true, encoding: .utf8)
        _ = try await docker.build(contextDirectory: context.url, tag: name) { _ in }
    }
}

extension SecretsFarm.Built {
    /// The build's log, record and every etcd key show none of `values`.
    func shows(any values: [String]) -> [String] {
        values.filter { log.contains($0) || everything.contains($0) }
    }
}
