import Foundation
import KilnCore
import Synchronization
import Logging

/// Everything a one-machine farm needs below Kiln itself: etcd, the registry, podman's
/// Docker-compatible API service with the base images, a Maven mirror over Debian's
/// maven-repo, and a git server holding the demo project. Used by `kiln up` and the tests.
///
/// All data lives under `dataDir`, so a second start reuses images and caches.
/// `stop()` stops what was started, in reverse order, by PID.
public final class Infrastructure: Sendable {
    /// Ports to use; nil picks a free one (tests), a number is required to be free (kiln up).
    public struct Ports: Sendable {
        public var etcd: Int?
        public var etcdPeer: Int?
        public var registry: Int?
        public var mavenMirror: Int?
        public var git: Int?
        public init(etcd: Int? = nil, etcdPeer: Int? = nil, registry: Int? = nil, mavenMirror: Int? = nil, git: Int? = nil) {
            self.etcd = etcd
            self.etcdPeer = etcdPeer
            self.registry = registry
            self.mavenMirror = mavenMirror
            self.git = git
        }
    }

    public static let buildImage = "localhost/kiln/jdk17-maven:1"

    public let dataDir: URL
    public let etcd: EtcdServer
    /// etcd's root user and one user per process, with their credential files in
    /// `dataDir/credentials/` (authentication is on: every client needs one).
    public let etcdUsers: EtcdUsers
    public let registry: RegistryServer
    public let podman: PodmanService
    public let mavenMirror: BackgroundServer
    public let git: BackgroundServer
    public let gitRoot: URL

    private init(dataDir: URL, etcd: EtcdServer, etcdUsers: EtcdUsers, registry: RegistryServer, podman: PodmanService, mavenMirror: BackgroundServer, git: BackgroundServer, gitRoot: URL) {
        self.dataDir = dataDir
        self.etcd = etcd
        self.etcdUsers = etcdUsers
        self.registry = registry
        self.podman = podman
        self.mavenMirror = mavenMirror
        self.git = git
        self.gitRoot = gitRoot
    }

    /// Starts everything. `podmanRoot` may be shared between runs (tests keep images there);
    /// by default it is `dataDir/podman`. `progress` receives one line per stage.
    /// `registryAuth`: the registry's token authentication (its realm is the scheduler's
    /// `/auth/token`, so the scheduler's address must be chosen before this starts).
    /// `pidsLimit`: the most processes any container of the builders' engine may hold
    /// (`OCIRuntimeWrapper`); the agents' `--build-pids`. `etcdMaintenance`: etcd's
    /// compaction and quota.
    public static func start(
        dataDir: URL, ports: Ports = Ports(), podmanRoot: URL? = nil, fixtures: URL? = nil,
        registryAuth: RegistryServer.TokenAuth? = nil, pidsLimit: Int = OCIRuntimeWrapper.defaultPidsLimit,
        etcdMaintenance: EtcdServer.Maintenance = .standard,
        logger: Logger, progress: @escaping @Sendable (String) -> Void = { _ in }
    ) async throws -> Infrastructure {
        let fm = FileManager.default
        try fm.createDirectory(at: dataDir, withIntermediateDirectories: true)
        for (name, port) in [("etcd", ports.etcd), ("etcd peer", ports.etcdPeer), ("registry", ports.registry), ("Maven mirror", ports.mavenMirror), ("git server", ports.git)] {
            if let port, FreePort.isInUse(port) {
                throw FarmError("port \(port) (\(name)) is already in use on 127.0.0.1: stop whatever listens there (`ss -ltnp 'sport = :\(port)'` shows it), or choose another port")
            }
        }
        guard let fixtures = fixtures ?? DemoRepository.locateFixtures() else {
            throw FarmError("cannot find Kiln's fixtures/ folder (with demo/pom.xml): run from the repository, or pass its path")
        }
        let logs = dataDir.appendingPathComponent("logs")
        var started: [@Sendable () async -> Void] = []
        func rollback() async { for stop in started.reversed() { await stop() } }
        do {
            progress("starting etcd")
            let etcd = try await EtcdServer.start(dataDir: dataDir.appendingPathComponent("etcd"), clientPort: ports.etcd, peerPort: ports.etcdPeer,
                                                  maintenance: etcdMaintenance)
            started.append { etcd.stop() }
            let etcdUsers = try await EtcdUsers.enable(endpoint: etcd.endpoint, credentialsDir: dataDir.appendingPathComponent("credentials"))
            progress("  etcd         \(etcd.endpoint) (authentication on; root's credential: \(etcdUsers.credentialsDir.path)/\(EtcdAccess.rootCredentialFileName); \(etcdMaintenance.summary))")

            progress("starting the registry")
            let registry = try await RegistryServer.start(root: dataDir.appendingPathComponent("registry"), port: ports.registry,
                                                          logFile: logs.appendingPathComponent("registry.log"), auth: registryAuth)
            started.append { registry.stop() }
            progress("  registry     \(registry.address)\(registryAuth.map { " (tokens from \($0.realm))" } ?? " (no authentication)")")

            progress("starting podman's Docker API service")
            let podmanDir = podmanRoot ?? dataDir.appendingPathComponent("podman")
            let podman = try await PodmanService.start(root: podmanDir, logFile: logs.appendingPathComponent("podman.log"), pidsLimit: pidsLimit)
            started.append { podman.stop() }
            progress("  containers   unix://\(podman.socketPath)")

            try await makeImages(fixtures: fixtures, podman: podman, progress: progress)

            // Builds run on podman's bridge: the mirror listens where they reach it and answers
            // only this machine and the bridge (see LocalPeers for why not the bridge address).
            let peers = LocalPeers.thisMachine(bridgeSubnets: podman.bridgeSubnets())
            let mirror = try await MavenMirror.start(port: ports.mavenMirror ?? 0, peers: peers, logger: logger)
            started.append { await mirror.stop() }
            progress("  Maven mirror \(mirror.bridgeURL) for builds (Debian's /usr/share/maven-repo; answers this machine and podman's bridge \(peers.networks.suffix(1).map(\.description).joined()) only)")

            let gitRoot = dataDir.appendingPathComponent("git")
            try fm.createDirectory(at: gitRoot, withIntermediateDirectories: true)
            let git = try await GitHTTPServer.start(root: gitRoot, port: ports.git ?? 0, logger: logger)
            started.append { await git.stop() }
            progress("  git server   \(git.url)/")

            return Infrastructure(dataDir: dataDir, etcd: etcd, etcdUsers: etcdUsers, registry: registry, podman: podman, mavenMirror: mirror, git: git, gitRoot: gitRoot)
        } catch {
            await rollback()
            throw error
        }
    }

    /// Runs fixtures/make-images.sh against this podman storage (a no-op once the images exist).
    static func makeImages(fixtures: URL, podman: PodmanService, progress: @escaping @Sendable (String) -> Void) async throws {
        let script = fixtures.appendingPathComponent("make-images.sh").path
        let pending = Mutex(Data())
        let r = try await Spawn.runDetached("/bin/bash", [script], environment: podman.environment) { chunk in
            pending.withLock { pending in
                pending.append(chunk)
                while let nl = pending.firstIndex(of: 10) {
                    progress("  " + String(decoding: pending[pending.startIndex..<nl], as: UTF8.self))
                    pending.removeSubrange(pending.startIndex...nl)
                }
            }
        }
        guard r.status == 0 else {
            throw FarmError("making the base images failed (\(script) exited \(r.status)); its output is above")
        }
    }

    /// The Maven mirror's URL as build containers on podman's bridge reach it: give it to
    /// agents (`--maven-mirror`), which write it into the settings.xml of compile containers.
    public var mavenMirrorForBuilds: String { mavenMirror.bridgeURL }

    /// The demo project's repository URL on this farm's git server.
    public func repositoryURL(_ name: String) -> String { "\(git.url)/\(name).git" }

    /// The git server as agents must allow it (`kiln agent --allow-fetch-from`): it listens
    /// on loopback, which an agent's fetch policy refuses by default.
    public var gitServerForFetches: String { "127.0.0.1:\(git.port)" }

    /// Publishes `fixtures/demo` (or `source`) as `name`.git on the git server; returns the tip.
    @discardableResult
    public func publishDemo(source: URL? = nil, name: String = "demo", edit: ((URL) throws -> Void)? = nil) throws -> String {
        guard let src = source ?? DemoRepository.locateFixtures()?.appendingPathComponent("demo") else {
            throw FarmError("cannot find fixtures/demo")
        }
        return try DemoRepository.publish(source: src, bareRepository: gitRoot.appendingPathComponent("\(name).git"), edit: edit)
    }

    public func stop() async {
        await git.stop()
        await mavenMirror.stop()
        podman.stop()
        registry.stop()
        etcd.stop()
    }
}
