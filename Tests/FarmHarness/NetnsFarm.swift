import AsyncHTTPClient
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import NIOCore
import RegistryAuth
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Kiln's farm with its parts on separate hosts (``NetnsNetwork``): three etcd members, the
/// registry, the git server, two schedulers, three builders, two cells and two lb hosts, each on a host of its own,
/// reaching each other by name. Only etcd, the registry and the git server are shared; no
/// file system path is: every file a process is given is in its host's folder
/// (`<run>/hosts/<host>/`), which ``start(on:name:_:)`` checks (it refuses any other
/// absolute path but the kiln binary, system programs and the builder's own podman storage).
/// Credentials are copied into each host's `credentials/` that needs them.
///
/// Layout (docs/testing-multihost.md): etcd-1..3 .11–.13 (https :2379, peers :2380 plain
/// HTTP on the farm's bridge, health :2381; every client shows a certificate of the farm's
/// CA), registry .21 (https :5443, token auth by the schedulers: realm
/// `https://kiln-api:7070/auth/token`), git .22 (`git daemon` :9418, a Maven mirror on http :8081), sched-1/2 .31–.32
/// (`kiln scheduler --listen <addr>:7070` with TLS), builder-1..3 .41–.43 (podman service +
/// `kiln agent --scheduler https://sched-1:7070,https://sched-2:7070`). `kiln-api` names
/// sched-2 in every hosts file. cell-1/2 .51–.52 (podman's API on a root-only unix socket,
/// nginx in front of it on `<addr>:2376` with TLS and client certificates, docs/cells.md;
/// app containers publish on the host's address, ports 20000–20049), lb-1/2 .61–.62
/// (`kiln lb-agent --group mh` with its nginx on `<addr>:8088`).
///
/// The test process is the operator: it reaches the hosts through the op link (etcd as root,
/// the schedulers' API and the registry, all over TLS with the farm's CA).
///
/// Two CAs: the farm's signs every server certificate (etcd, registry, schedulers, the cells'
/// proxies) and the etcd client certificates; the cell clients' CA signs only the
/// schedulers' certificate for the cells' proxies, so no etcd client certificate (a
/// builder's, say) opens a cell's engine.
public final class NetnsFarm: Sendable {
    public static let etcdHosts = ["etcd-1", "etcd-2", "etcd-3"]
    public static let schedulerHosts = ["sched-1", "sched-2"]
    public static let builderHosts = ["builder-1", "builder-2", "builder-3"]
    public static let cellHosts = ["cell-1", "cell-2"]
    public static let lbHosts = ["lb-1", "lb-2"]
    public static let layout: [(name: String, octet: Int)] = [
        ("etcd-1", 11), ("etcd-2", 12), ("etcd-3", 13), ("registry", 21), ("git", 22),
        ("sched-1", 31), ("sched-2", 32), ("builder-1", 41), ("builder-2", 42), ("builder-3", 43),
        ("cell-1", 51), ("cell-2", 52), ("lb-1", 61), ("lb-2", 62),
    ]
    /// The port of each cell host's TLS proxy in front of its engine.
    public static let cellProxyPort = 2376
    /// The host ports a cell's app instances publish on (on the cell host's address).
    public static let cellPorts = 20000...20049
    /// The lb group both lb hosts serve, and the port their nginx listens on.
    public static let lbGroup = "mh"
    public static let lbPort = 8088
    /// The Maven mirror's port on the git host, and its URL as builds reach it.
    public static let mavenMirrorPort = 8081
    public static let mavenMirrorURL = "http://git:\(mavenMirrorPort)"
    /// The scheduler port on every scheduler host.
    public static let apiPort = 7070
    /// The registry's name and port, the same on every host.
    public static let registryName = "registry:5443"

    /// Where the builders' podman storages are kept from one run to the next (images are
    /// made once): `KILN_TEST_MULTIHOST_ROOT`, by default /var/tmp/kiln-test/multihost.
    public static let persistentRoot = URL(fileURLWithPath: ProcessInfo.processInfo.environment["KILN_TEST_MULTIHOST_ROOT"] ?? "/var/tmp/kiln-test/multihost")

    public let net: NetnsNetwork
    public let kiln: String
    /// The farm's CA (the operator's copy).
    public let caFile: String
    /// An HTTP client trusting the farm's CA.
    public let tlsClient: HTTPClient
    public let etcdCluster: EtcdCluster
    public let etcdUsers: EtcdUsers
    /// The operator's etcd client, as root, over the op link.
    public var etcd: EtcdClient { etcdUsers.rootClient }
    public let registry: RegistryServer
    public let git: ManagedProcess
    /// The Maven mirror on the git host: `http://git:8081/`, serving ``mavenDir``.
    public let mavenMirror: ManagedProcess
    /// What the Maven mirror serves (the git host's `maven/` folder).
    public var mavenDir: URL { net.host("git").dir.appendingPathComponent("maven") }
    /// Each builder host's podman service.
    public let podmanServices: [String: PodmanService]
    /// Each cell host's podman service (its unix socket) and the nginx proxying TLS to it.
    public let cellServices: [String: PodmanService]
    public let cellProxies: [String: ManagedProcess]
    /// What `kiln cell credential set` seals for both cells: the schedulers' client
    /// certificate (the cell clients' CA) and the farm's CA, which signed the proxies'.
    public let cellCredential: CellCredential
    public let adminToken: String
    public let keys = Keys()
    /// The registry password of each machine (builders, `deployer`).
    public let machines: [String: String]
    private let started = Mutex<[String: ManagedProcess]>([:])
    private let stopped = Mutex(false)
    /// The lock on ``persistentRoot`` this farm holds until it stops (``lockStorage(timeout:)``).
    private let storageLock = Mutex<Int32?>(nil)

    /// `Authorization` for the API as the first admin.
    public var adminHeaders: [(String, String)] { [("Authorization", "Bearer \(adminToken)")] }

    /// The etcd endpoints every host uses (by name).
    public var etcdEndpoint: String { Self.etcdHosts.map { "https://\($0):2379" }.joined(separator: ",") }

    /// The API base URL of a scheduler host, as the operator reaches it (its address).
    public func api(_ scheduler: String) -> String { "https://\(net.host(scheduler).address):\(Self.apiPort)" }

    public func hostDir(_ host: String) -> URL { net.host(host).dir }

    /// Builds the network and starts etcd, the registry, the git server and the Maven mirror,
    /// the builders' podman services, and the cells' podman services with their nginx
    /// proxies; Kiln's own processes are started by the caller (``startKiln(leaderTTL:)``, or
    /// ``startScheduler(_:options:)``, ``startAgent(_:options:)``, ``startLBAgent(_:options:)``
    /// and ``addCells()`` one by one).
    public static func start(kiln: String) async throws -> NetnsFarm {
        guard FileManager.default.isExecutableFile(atPath: kiln) else { throw FarmError("\(kiln) is missing: run swift build") }
        let lock = try await lockStorage()
        let net: NetnsNetwork
        do {
            net = try NetnsNetwork.create(layout, aliases: ["kiln-api": "sched-2"])
        } catch {
            close(lock)
            throw error
        }
        do {
            let farm = try await start(net: net, kiln: kiln)
            farm.storageLock.withLock { $0 = lock }
            return farm
        } catch {
            net.teardown()
            close(lock)
            throw error
        }
    }

    /// Takes the lock on ``persistentRoot`` (`<root>/farm.lock`, flock): the builders' and
    /// cells' kept storages serve one farm at a time, and a second farm starting their podman
    /// services would stop the first one's (the multi-host tests and `kiln-bench multihost`
    /// on one machine). Waits for the other farm to stop, saying so, up to `timeout`.
    static func lockStorage(timeout: Duration = .seconds(900)) async throws -> Int32 {
        try FileManager.default.createDirectory(at: persistentRoot, withIntermediateDirectories: true)
        let path = persistentRoot.appendingPathComponent("farm.lock").path
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw FarmError("cannot open \(path): errno \(errno)") }
        let deadline = ContinuousClock.now + timeout
        var said = false
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            guard ContinuousClock.now < deadline else {
                close(fd)
                throw FarmError("another multi-host farm has held \(path) for \(timeout): stop it (its run folder is /tmp/kmh*), or set KILN_TEST_MULTIHOST_ROOT to keep the storages elsewhere")
            }
            if !said {
                print("multi-host: another farm holds \(path) (its builders' and cells' storages); waiting for it to stop")
                said = true
            }
            try await Task.sleep(for: .seconds(1))
        }
        return fd
    }

    private static func start(net: NetnsNetwork, kiln: String) async throws -> NetnsFarm {
        let fm = FileManager.default
        let run = net.dir
        let credentials = run.appendingPathComponent("credentials")
        try fm.createDirectory(at: credentials, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])

        // The CA, and a certificate for each TLS server (its host name and address).
        let pki = try FarmPKI(dir: run.appendingPathComponent("ca"))
        for host in net.hosts.values {
            let tls = host.dir.appendingPathComponent("tls")
            try fm.createDirectory(at: tls, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try fm.copyItem(atPath: pki.ca, toPath: tls.appendingPathComponent("ca.pem").path)
            if etcdHosts.contains(host.name) || host.name == "registry" || schedulerHosts.contains(host.name) || cellHosts.contains(host.name) {
                try pki.issue(name: host.name, address: host.address, into: tls, aliases: host.name == "sched-2" ? ["kiln-api"] : [])
            }
            // etcd with a trusted CA asks every client for a certificate (etcd 3.4 answers
            // "bad certificate" to one without), even without --client-cert-auth: each etcd
            // client host gets its own. --client-cert-auth stays off: it would make the
            // certificate, not the password token, the etcd user.
            if schedulerHosts.contains(host.name) || builderHosts.contains(host.name) || lbHosts.contains(host.name) {
                try pki.issueClient(name: host.name, into: tls)
            }
            // Every host's podman trusts the registry through the CA (no insecure entry).
            let certs = host.dir.appendingPathComponent("etc-containers/certs.d/\(registryName)")
            try fm.createDirectory(at: certs, withIntermediateDirectories: true)
            try fm.copyItem(atPath: pki.ca, toPath: certs.appendingPathComponent("ca.crt").path)
        }
        try pki.issueClient(name: "operator", into: pki.dir)
        // The cell clients' CA: nginx on each cell host accepts only its certificates.
        let cellClients = try FarmPKI(dir: run.appendingPathComponent("cell-clients-ca"), name: "kiln-multihost-cell-clients-ca")
        try cellClients.issueClient(name: "kiln-scheduler", into: cellClients.dir)
        let cellCredential = CellCredential(
            clientCertificate: try String(contentsOf: cellClients.dir.appendingPathComponent("client.pem"), encoding: .utf8),
            clientKey: try String(contentsOf: cellClients.dir.appendingPathComponent("client.key"), encoding: .utf8),
            certificateAuthority: try String(contentsOfFile: pki.ca, encoding: .utf8))
        for host in cellHosts {
            try fm.copyItem(atPath: cellClients.ca, toPath: net.host(host).dir.appendingPathComponent("tls/clients-ca.pem").path)
        }
        let operatorTLS = EtcdTLS(caFile: pki.ca, certificateFile: pki.dir.appendingPathComponent("client.pem").path,
                                  keyFile: pki.dir.appendingPathComponent("client.key").path)
        let tlsClient = try EtcdClient.tlsHTTPClient(for: operatorTLS)

        func placement(_ host: String) -> Placement {
            let h = net.host(host)
            return Placement(bindHost: h.address, advertise: host, launcher: net.launcher(host), probeHost: h.address, probeClient: tlsClient)
        }
        for host in net.hosts.values { try net.checkRoute(host.address) }

        // etcd: three members, client TLS, each on its host with its own data and certificate.
        let memberTLS = etcdHosts.map { host -> EtcdServer.TLS in
            let tls = net.host(host).dir.appendingPathComponent("tls")
            return EtcdServer.TLS(certificateFile: tls.appendingPathComponent("server.pem").path, keyFile: tls.appendingPathComponent("server.key").path,
                                  caFile: tls.appendingPathComponent("ca.pem").path)
        }
        let memberDirs = etcdHosts.enumerated().map { net.host($0.element).dir.appendingPathComponent("etcd/m\($0.offset + 1)") }
        for (i, host) in etcdHosts.enumerated() {
            try checkNoSharedPath(net: net, host: host, kiln: kiln, [memberDirs[i].path, memberTLS[i].certificateFile, memberTLS[i].keyFile, memberTLS[i].caFile])
        }
        let cluster = try await EtcdCluster.start(dir: run.appendingPathComponent("etcd-unused"), tls: nil, placements: etcdHosts.map(placement),
                                                  memberDirs: memberDirs, memberTLS: memberTLS)
        // From here on, whatever fails stops what was started before it (latest first).
        let started = StartedProcesses()
        started.add { cluster.kill() }
        do {
            let etcdUsers = try await EtcdUsers.enable(endpoint: cluster.probeEndpoints.joined(separator: ","), credentialsDir: credentials, tls: operatorTLS)

            // The registry: TLS with its own certificate, token auth by the schedulers (kiln-api).
            let adminToken = "kiln_" + Secret.random()
            let eventsToken = Secret.random()
            let signingKey = TokenSigningKey.generate()
            let registryDir = net.host("registry").dir
            let bundle = registryDir.appendingPathComponent("credentials/registry-signing-cert.pem")
            try fm.createDirectory(at: bundle.deletingLastPathComponent(), withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try CredentialFile.write(try signingKey.certificatePEM(), to: bundle.path)
            let registryTLS = RegistryServer.TLS(certificate: registryDir.appendingPathComponent("tls/server.pem").path,
                                                 key: registryDir.appendingPathComponent("tls/server.key").path,
                                                 ca: registryDir.appendingPathComponent("tls/ca.pem").path)
            try checkNoSharedPath(net: net, host: "registry", kiln: kiln, [registryDir.appendingPathComponent("registry").path, bundle.path, registryTLS.certificate, registryTLS.key])
            let registry = try await RegistryServer.start(
                    root: registryDir.appendingPathComponent("registry"), port: 5443,
                    auth: .init(realm: "https://kiln-api:\(apiPort)/auth/token", rootCertBundle: bundle, events: ("https://kiln-api:\(apiPort)/hooks/registry", eventsToken)),
                    tls: registryTLS, placement: {
                        // Go reads SSL_CERT_FILE: the registry's events to https://kiln-api trust the farm's CA.
                        var p = placement("registry")
                        p.launcher += ["SSL_CERT_FILE=\(registryTLS.ca)"]
                        return p
                    }())
            started.add { registry.stop() }

            // The git server: git daemon serving the bare repositories in the git host's folder.
            let gitDir = net.host("git").dir.appendingPathComponent("git")
            try fm.createDirectory(at: gitDir, withIntermediateDirectories: true)
            let git = try net.start(on: "git", name: "git daemon", executable: "git",
                                    arguments: ["daemon", "--reuseaddr", "--export-all", "--base-path=\(gitDir.path)", "--listen=\(net.host("git").address)", "--port=9418", gitDir.path],
                                    logFile: net.host("git").dir.appendingPathComponent("git-daemon.log"))
            started.add { git.stop() }
            // A Maven mirror on the git host (a static HTTP server of its `maven/` folder, as a
            // Nexus would be): the agents' --maven-mirror names it, builds reach it by name.
            let mavenDir = net.host("git").dir.appendingPathComponent("maven")
            try fm.createDirectory(at: mavenDir, withIntermediateDirectories: true)
            let mavenMirror = try net.start(on: "git", name: "maven mirror", executable: "python3",
                                            arguments: ["-m", "http.server", String(mavenMirrorPort), "--bind", net.host("git").address, "--directory", mavenDir.path],
                                            logFile: net.host("git").dir.appendingPathComponent("maven-mirror.log"))
            started.add { mavenMirror.stop() }

            // A host's podman service on its kept storage, with fresh run state and no leftovers
            // of an earlier run's containers.
            func startKeptPodman(_ host: String) async throws -> PodmanService {
                let root = persistentRoot.appendingPathComponent(host)
                for sub in ["run", "tmp"] { try? fm.removeItem(at: root.appendingPathComponent(sub)) }
                let service = try await PodmanService.start(root: root, logFile: net.host(host).dir.appendingPathComponent("podman.log"), timeout: 60,
                                                            placement: placement(host))
                _ = try? service.podmanCommand(["rm", "-af"])
                started.add {
                    _ = try? service.podmanCommand(["rm", "-af", "-t", "0"])
                    service.stop()
                }
                return service
            }

            // The builders' podman: a storage of their own each, kept across runs.
            var podman: [String: PodmanService] = [:]
            for host in builderHosts { podman[host] = try await startKeptPodman(host) }
            try ensureImage(buildImage, in: podman) { try $0.ensureBusyboxImage(buildImage) }

            // The cells: podman on a root-only unix socket of the cell host, nginx in front of
            // it with TLS and client certificates (docs/cells.md §1–3). Images come from the
            // registry only (by digest, with the deployer's credential); nothing is loaded.
            var cellServices: [String: PodmanService] = [:]
            var cellProxies: [String: ManagedProcess] = [:]
            for host in cellHosts {
                let service = try await startKeptPodman(host)
                cellServices[host] = service
                let proxy = try await startCellProxy(net: net, host: host, socket: service.socketPath, kiln: kiln)
                cellProxies[host] = proxy
                started.add { proxy.stop(grace: 5) }
            }

            // Machine credentials for the registry (etcd holds only their SHA-256), one file per builder host.
            var machines: [String: String] = [:]
            for name in builderHosts + ["deployer"] {
                let token = Secret.random()
                machines[name] = token
                let record = MachineCredential(name: name, kind: name == "deployer" ? .deployer : .agent, tokenSHA256: MachineToken.sha256Hex(token))
                _ = try await etcdUsers.rootClient.put(Keys().machine(name), try KilnJSON.encode(record))
                if builderHosts.contains(name) {
                    try CredentialFile.write("\(name):\(token)", to: net.host(name).dir.appendingPathComponent("credentials/registry").path)
                }
            }
            // The deployer's credential: the schedulers pull with it into the cells.
            for host in schedulerHosts {
                try CredentialFile.write("deployer:\(machines["deployer"]!)", to: net.host(host).dir.appendingPathComponent("credentials/registry-deployer").path)
            }
            // The schedulers' files: each host its own copy of the same content.
            let secretsKey = try LocalSecretsKey.ensure(credentialsDir: credentials)
            for host in schedulerHosts {
                let dir = net.host(host).dir.appendingPathComponent("credentials")
                try CredentialFile.write(adminToken, to: dir.appendingPathComponent("admin-token").path)
                try CredentialFile.write(eventsToken, to: dir.appendingPathComponent("registry-events-token").path)
                try CredentialFile.write(signingKey.privateKeyPEM, to: dir.appendingPathComponent("registry-signing-key.pem").path)
                try CredentialFile.write(try String(contentsOfFile: secretsKey, encoding: .utf8), to: dir.appendingPathComponent(LocalSecretsKey.fileName).path)
            }
            return NetnsFarm(net: net, kiln: kiln, caFile: pki.ca, tlsClient: tlsClient, etcdCluster: cluster, etcdUsers: etcdUsers, registry: registry,
                             git: git, mavenMirror: mavenMirror, podman: podman, cellServices: cellServices, cellProxies: cellProxies, cellCredential: cellCredential, adminToken: adminToken, machines: machines)
        } catch {
            started.stopAll()
            throw error
        }
    }

    /// The build image of the test projects, in every builder's storage.
    public static let buildImage = "localhost/kiln/busybox:1"

    /// Makes sure every builder's storage holds `image`: made once with `make` in
    /// builder-1's storage when no builder has it, then `podman save` (an OCI archive kept in
    /// `<persistentRoot>/images/`, so a fresh storage needs only a load) and `podman load`
    /// into each builder that lacks it. Every command runs on the builder's host.
    static func ensureImage(_ image: String, in services: [String: PodmanService], make: (PodmanService) throws -> Void) throws {
        func has(_ s: PodmanService) -> Bool { (try? s.podmanCommand(["image", "exists", image]))?.status == 0 }
        func podman(_ s: PodmanService, _ arguments: [String]) throws {
            let r = try s.podmanCommand(arguments)
            guard r.status == 0 else { throw FarmError("podman \(arguments.joined(separator: " ")) failed (\(r.status)): \(r.output)") }
        }
        let ordered = builderHosts.compactMap { services[$0] }
        let missing = ordered.filter { !has($0) }
        if missing.isEmpty { return }
        let images = persistentRoot.appendingPathComponent("images")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        let archive = images.appendingPathComponent(image.map { $0.isLetter || $0.isNumber ? $0 : "_" } + ".oci.tar").path
        var source = ordered.first(where: has)
        if source == nil, !FileManager.default.fileExists(atPath: archive) {
            try make(ordered[0])
            source = ordered[0]
        }
        if let source, !FileManager.default.fileExists(atPath: archive) {
            try podman(source, ["save", "--format", "oci-archive", "-o", archive + ".part", image])
            try FileManager.default.moveItem(atPath: archive + ".part", toPath: archive)
        }
        for service in ordered where !has(service) {
            try podman(service, ["load", "-i", archive])
            // An OCI archive loads under the name it was saved with; tag it if podman lost it.
            if !has(service) { throw FarmError("podman load of \(archive) did not give \(image)") }
        }
    }

    /// nginx on cell `host`: TLS on `<addr>:2376` with the host's certificate (the farm's CA),
    /// client certificates of the cell clients' CA only, proxying to the engine's unix socket;
    /// the lines docs/cells.md gives. Returns once it listens.
    static func startCellProxy(net: NetnsNetwork, host: String, socket: String, kiln: String) async throws -> ManagedProcess {
        let h = net.host(host)
        let dir = h.dir.appendingPathComponent("cell-proxy")
        for sub in ["logs", "temp"] { try FileManager.default.createDirectory(at: dir.appendingPathComponent(sub), withIntermediateDirectories: true) }
        let tls = h.dir.appendingPathComponent("tls").path
        let config = NginxTestConfig.wrap(dir: dir.path, logFormat: "$status $ssl_client_verify \"$request\"", connections: 256, server: """
            server {
                listen \(h.address):\(cellProxyPort) ssl;
                ssl_certificate \(tls)/server.pem;
                ssl_certificate_key \(tls)/server.key;
                ssl_client_certificate \(tls)/clients-ca.pem;
                ssl_verify_client on;
                location / {
                    proxy_pass http://unix:\(socket):;
                    proxy_http_version 1.1;
                    proxy_set_header Host localhost;
                    proxy_buffering off;
                    proxy_request_buffering off;
                    client_max_body_size 0;
                    proxy_read_timeout 600s;
                    proxy_send_timeout 600s;
                }
            }
            """)
        let file = dir.appendingPathComponent("nginx.conf")
        try config.write(to: file, atomically: true, encoding: .utf8)
        let arguments = ["-p", dir.path + "/", "-c", file.path]
        try checkNoSharedPath(net: net, host: host, kiln: kiln, arguments + [tls, socket])
        try net.checkRoute(h.address)
        let nginx = try net.start(on: host, name: "nginx (cell proxy)", executable: "nginx", arguments: arguments, logFile: dir.appendingPathComponent("logs/nginx.log"))
        let deadline = ContinuousClock.now + .seconds(30)
        while !FreePort.isInUse(cellProxyPort, host: h.address) {
            guard nginx.isRunning, ContinuousClock.now < deadline else {
                nginx.stop(grace: 2)
                throw FarmError("nginx on \(host) did not listen on \(h.address):\(cellProxyPort): \(nginx.logTail())\n\((try? String(contentsOf: dir.appendingPathComponent("logs/error.log"), encoding: .utf8)) ?? "")")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        return nginx
    }

    private init(net: NetnsNetwork, kiln: String, caFile: String, tlsClient: HTTPClient, etcdCluster: EtcdCluster, etcdUsers: EtcdUsers,
                 registry: RegistryServer, git: ManagedProcess, mavenMirror: ManagedProcess, podman: [String: PodmanService], cellServices: [String: PodmanService],
                 cellProxies: [String: ManagedProcess], cellCredential: CellCredential,
                 adminToken: String, machines: [String: String]) {
        self.net = net
        self.kiln = kiln
        self.caFile = caFile
        self.tlsClient = tlsClient
        self.etcdCluster = etcdCluster
        self.etcdUsers = etcdUsers
        self.registry = registry
        self.git = git
        self.mavenMirror = mavenMirror
        self.podmanServices = podman
        self.cellServices = cellServices
        self.cellProxies = cellProxies
        self.cellCredential = cellCredential
        self.adminToken = adminToken
        self.machines = machines
    }

    deinit {
        stop()
    }

    // MARK: processes

    /// Throws unless every absolute path among `values` (arguments or environment values,
    /// split on `,` `=` `:` boundaries) is in `host`'s folder, the host's own kept storage,
    /// the kiln binary, a system program or /usr/share/maven-repo: point 1's "no file
    /// system path is shared", checked for every process the farm starts.
    public static func checkNoSharedPath(net: NetnsNetwork, host: String, kiln: String, _ values: [String]) throws {
        let own = [net.host(host).dir.path, persistentRoot.appendingPathComponent(host).path]
        let system = ["/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/", "/usr/share/maven-repo", "/dev/null"]
        for value in values {
            // "unix:///x", "--a=/x", "https://h:1,https://h:2": pull the paths out.
            var text = value.replacingOccurrences(of: "unix://", with: "").replacingOccurrences(of: "file://", with: "")
            text = text.replacingOccurrences(of: "=", with: ",")
            for token in text.split(separator: ",").map(String.init) where token.hasPrefix("/") {
                let path = URL(fileURLWithPath: token).standardizedFileURL.path
                if path == kiln || own.contains(where: { path == $0 || path.hasPrefix($0 + "/") }) || system.contains(where: { path.hasPrefix($0) }) { continue }
                throw FarmError("host \(host) was given \(path), which is outside its folder \(own[0]): hosts share no file system path (copy the file into the host's folder)")
            }
        }
    }

    /// Starts `arguments` of the kiln binary on `host` as `name` (its log `<host>/logs/<name>.log`),
    /// after checking that it names no path outside the host.
    public func start(on host: String, name: String, _ arguments: [String], environment: [String: String] = [:]) throws -> ManagedProcess {
        try Self.checkNoSharedPath(net: net, host: host, kiln: kiln, arguments + Array(environment.values))
        let p = try net.start(on: host, name: name, executable: kiln, arguments: arguments, environment: environment,
                              logFile: net.host(host).dir.appendingPathComponent("logs/\(name).log"))
        started.withLock { $0[name] = p }
        return p
    }

    /// The etcd options of a process on `host` running as `access`'s user: the credential file
    /// and the CA copied into the host first.
    public func etcdOptions(on host: String, _ access: EtcdAccess) async throws -> [String] {
        let source = try await etcdUsers.ensure(access)
        let dir = net.host(host).dir.appendingPathComponent("credentials")
        let target = dir.appendingPathComponent(source.lastPathComponent)
        try CredentialFile.write(try String(contentsOf: source, encoding: .utf8), to: target.path)
        let tls = net.host(host).dir.appendingPathComponent("tls")
        return ["--etcd", etcdEndpoint, "--etcd-ca", tls.appendingPathComponent("ca.pem").path, "--etcd-cert", tls.appendingPathComponent("client.pem").path,
                "--etcd-key", tls.appendingPathComponent("client.key").path, "--etcd-credentials", target.path]
    }

    /// Starts `kiln scheduler` on `host` (id = the host name) and waits until its API answers
    /// as that scheduler over the op link.
    @discardableResult
    public func startScheduler(_ host: String, options: [String] = []) async throws -> ManagedProcess {
        let dir = net.host(host).dir
        let c = dir.appendingPathComponent("credentials")
        let p = try start(on: host, name: host, [
            "scheduler", "--listen", "\(net.host(host).address):\(Self.apiPort)", "--id", host, "--log-level", "info",
            "--data-dir", dir.appendingPathComponent("scheduler").path,
            "--admin-token-file", c.appendingPathComponent("admin-token").path,
            "--secrets-key-file", c.appendingPathComponent(LocalSecretsKey.fileName).path,
            "--registry-signing-key", c.appendingPathComponent("registry-signing-key.pem").path,
            "--registry-events-token-file", c.appendingPathComponent("registry-events-token").path,
            "--registry", Self.registryName, "--registry-url", "https://\(Self.registryName)",
            "--registry-credentials", c.appendingPathComponent("registry-deployer").path,
            // Logs archived by one scheduler are read by the other: the registry, not a folder.
            "--log-archive", "registry",
            "--tls-cert", dir.appendingPathComponent("tls/server.pem").path, "--tls-key", dir.appendingPathComponent("tls/server.key").path,
            "--ca-file", dir.appendingPathComponent("tls/ca.pem").path,
        ] + (try await etcdOptions(on: host, .scheduler)) + options)
        try net.checkRoute(net.host(host).address)
        let url = "\(api(host))/api/v1/scheduler"
        try await p.waitUntilReady(timeout: 60) {
            guard let reply = try? await FarmHTTP.send("GET", url, headers: self.adminHeaders, client: self.tlsClient, timeout: .seconds(3)), reply.status == 200,
                  let status = try? KilnJSON.decode(SchedulerStatus.self, from: reply.body) else { return false }
            return status.id == host
        }
        return p
    }

    /// Starts `kiln agent` on builder `host` (id = the host name) with its own podman, data
    /// folder and registry credential.
    @discardableResult
    public func startAgent(_ host: String, options: [String] = []) async throws -> ManagedProcess {
        let dir = net.host(host).dir
        guard let service = podmanServices[host] else { throw FarmError("\(host) is not a builder host") }
        return try start(on: host, name: host, [
            "agent", "--id", host, "--capacity", "1", "--ttl", "3", "--log-level", "info",
            "--data-dir", dir.appendingPathComponent("agent").path,
            "--docker-socket", service.socketPath,
            "--registry", Self.registryName,
            "--registry-credentials", dir.appendingPathComponent("credentials/registry").path,
            "--scheduler", Self.schedulerHosts.map { "https://\($0):\(Self.apiPort)" }.joined(separator: ","),
            "--ca-file", dir.appendingPathComponent("tls/ca.pem").path,
            "--maven-mirror", Self.mavenMirrorURL,
        ] + (try await etcdOptions(on: host, .agent(host))) + options)
    }

    /// Starts Kiln's own processes on the farm, as the multi-host tests and `kiln-bench
    /// multihost` use it: sched-1 (waited for until it leads, so the lead is known), sched-2,
    /// the three agents and the two lb-agents, and adds both cells; returns once every agent
    /// is registered.
    public func startKiln(leaderTTL: Int = 2) async throws {
        try await startScheduler("sched-1", options: ["--leader-ttl", String(leaderTTL)])
        let deadline = ContinuousClock.now + .seconds(60)
        while true {
            let r = try? await request("GET", "/api/v1/scheduler", on: "sched-1")
            if let r, (try? KilnJSON.decode(SchedulerStatus.self, from: r.body))?.isLeader == true { break }
            guard ContinuousClock.now < deadline else { throw FarmError("sched-1 did not take the lead within 60 s") }
            try await Task.sleep(for: .milliseconds(200))
        }
        try await startScheduler("sched-2", options: ["--leader-ttl", String(leaderTTL)])
        for host in Self.builderHosts { try await startAgent(host) }
        for host in Self.lbHosts { try await startLBAgent(host) }
        try await addCells()
        try await waitForAgents(Self.builderHosts)
    }

    /// Starts `kiln lb-agent` on lb `host` (id = the host name, group ``lbGroup``): it runs its
    /// nginx on `<addr>:8088` from the host's `lb/` folder, and reports to etcd with a 3 s
    /// lease. Returns once its report is in etcd and nginx answers.
    @discardableResult
    public func startLBAgent(_ host: String, options: [String] = []) async throws -> ManagedProcess {
        guard Self.lbHosts.contains(host) else { throw FarmError("\(host) is not an lb host") }
        let h = net.host(host)
        let p = try start(on: host, name: host, [
            "lb-agent", "--group", Self.lbGroup, "--id", host, "--listen", "\(h.address):\(Self.lbPort)", "--ttl", "3", "--log-level", "info",
            "--dir", h.dir.appendingPathComponent("lb").path,
        ] + (try await etcdOptions(on: host, .lbAgent(group: Self.lbGroup, id: host))) + options)
        let key = SLBKeys().agent(group: Self.lbGroup, host)
        try net.checkRoute(h.address)
        try await p.waitUntilReady(timeout: 60) {
            guard (try? await self.etcd.get(key)) != nil else { return false }
            return FreePort.isInUse(Self.lbPort, host: h.address)
        }
        return p
    }

    /// The cells as an admin adds them (`kiln cell add` and `kiln cell credential set`
    /// through sched-1's API): `https://cell-N:2376`, advertised on the cell host's address,
    /// ports ``cellPorts``, the sealed ``cellCredential``.
    public func addCells() async throws {
        for host in Self.cellHosts {
            let cell = Cell(name: host, endpoint: "https://\(host):\(Self.cellProxyPort)", firstPort: Self.cellPorts.lowerBound, lastPort: Self.cellPorts.upperBound,
                            advertiseHost: net.host(host).address)
            let put = try await request("PUT", "/api/v1/cells/\(host)", body: try KilnJSON.encode(cell))
            guard put.status == 200 || put.status == 201 else { throw FarmError("adding cell \(host): \(put.status) \(put.body)") }
            let credential = try await request("PUT", "/api/v1/cells/\(host)/credentials", body: try KilnJSON.encode(cellCredential))
            guard credential.status == 200 || credential.status == 201 else { throw FarmError("the credential of cell \(host): \(credential.status) \(credential.body)") }
        }
    }

    /// A process this farm started by name (a scheduler or agent: its host's name).
    public func process(_ name: String) -> ManagedProcess? { started.withLock { $0[name] } }

    /// Waits until the agents `ids` are registered in etcd (fails at once if one exits).
    public func waitForAgents(_ ids: [String], timeout: Duration = .seconds(180)) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            for id in ids {
                if let p = process(id), !p.isRunning { throw FarmError("\(id) exited while starting: \(p.logTail())") }
            }
            let registered = Set(try await etcd.range(prefix: keys.agents).kvs.map(\.key))
            if ids.allSatisfy({ registered.contains(keys.agent($0)) }) { return }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw FarmError("agents \(ids.joined(separator: ", ")) did not all register within \(timeout)\n\(logs())")
    }

    /// A request to `scheduler`'s API as the first admin.
    public func request(_ method: String, _ path: String, on scheduler: String = "sched-1", body: String? = nil) async throws -> (status: Int, body: String) {
        try net.checkRoute(net.host(scheduler).address)
        return try await FarmHTTP.send(method, api(scheduler) + path, body: body, headers: adminHeaders, client: tlsClient, timeout: .seconds(30))
    }

    /// Publishes `files` (name → content) as the `main` branch of `<name>.git` on the git host;
    /// its URL as the builders reach it, and the commit `main` now names.
    @discardableResult
    public func publish(_ name: String, files: [String: String]) throws -> (url: String, commit: String) {
        let source = net.dir.appendingPathComponent("sources/\(name)")
        try? FileManager.default.removeItem(at: source)
        try FileManager.default.createDirectory(at: source, withIntermediateDirectories: true)
        for (file, content) in files { try content.write(to: source.appendingPathComponent(file), atomically: true, encoding: .utf8) }
        let commit = try DemoRepository.publish(source: source, bareRepository: net.host("git").dir.appendingPathComponent("git/\(name).git"))
        return ("git://git/\(name).git", commit)
    }

    /// Sends GitLab's push hook for `commit` on `main` of `repository` (a URL ``publish(_:files:)``
    /// returned) to `scheduler`'s `/hooks/gitlab` with the project's webhook `token`; the id of
    /// the first build it queued.
    public func sendPushHook(repository: String, commit: String, token: String, to scheduler: String = "sched-1") async throws -> String {
        let hook: [String: Any] = [
            "object_kind": "push", "ref": "refs/heads/main", "before": String(repeating: "0", count: 40), "after": commit,
            "checkout_sha": commit, "user_username": "multihost", "total_commits_count": 1,
            "project": ["git_http_url": repository],
        ]
        let body = String(decoding: try JSONSerialization.data(withJSONObject: hook), as: UTF8.self)
        try net.checkRoute(net.host(scheduler).address)
        let reply = try await FarmHTTP.send("POST", api(scheduler) + "/hooks/gitlab", body: body,
                                            headers: [("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", token), ("X-Gitlab-Event-UUID", UUID().uuidString)],
                                            client: tlsClient)
        guard reply.status == 201,
              let answer = try JSONSerialization.jsonObject(with: Data(reply.body.utf8)) as? [String: Any],
              let id = (answer["builds"] as? [String])?.first else { throw FarmError("the push hook answered \(reply.status): \(reply.body)") }
        return id
    }

    /// Runs the podman CLI on builder or cell `host` (its storage, through its holder).
    public func podman(on host: String, _ arguments: [String]) throws -> String {
        guard let service = podmanServices[host] ?? cellServices[host] else { throw FarmError("\(host) is neither a builder nor a cell host") }
        let r = try service.podmanCommand(arguments)
        guard r.status == 0 else { throw FarmError("podman \(arguments.joined(separator: " ")) on \(host) failed: \(r.output)") }
        return r.output
    }

    /// The last `lines` lines of every process's log, by host, for a failing expectation.
    public func logs(lines: Int = 15) -> String {
        var parts: [(String, ManagedProcess)] = etcdCluster.members.enumerated().map { ("etcd-\($0.offset + 1)", $0.element.process) }
        parts += [("registry", registry.process), ("git", git), ("maven mirror", mavenMirror)]
        parts += podmanServices.merging(cellServices) { a, _ in a }.sorted { $0.key < $1.key }.map { ("\($0.key) podman", $0.value.process) }
        parts += cellProxies.sorted { $0.key < $1.key }.map { ("\($0.key) nginx", $0.value) }
        parts += started.withLock { $0 }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        return parts.map { "--- \($0.0)\($0.1.isRunning ? "" : " (exited \($0.1.status ?? -1))")\n\($0.1.logTail(lines: lines))" }.joined(separator: "\n")
    }

    /// Stops everything in this order: agents, schedulers and
    /// lb-agents (each stops its nginx), the cells' proxies, the builders' and the cells'
    /// containers (through their hosts) and podman, git, the registry, etcd, then the network. Calling it twice is harmless.
    public func stop() {
        guard stopped.withLock({ s in defer { s = true }; return !s }) else { return }
        let processes = started.withLock { $0 }.values
        for p in processes where p.isRunning { kill(p.pid, SIGTERM) }
        for p in processes { p.stop(grace: 10) }
        for p in cellProxies.values { p.stop(grace: 5) }
        for service in Array(podmanServices.values) + Array(cellServices.values) {
            _ = try? service.podmanCommand(["rm", "-af", "-t", "0"])
            service.stop()
        }
        git.stop()
        mavenMirror.stop()
        registry.stop()
        etcdCluster.stop()
        net.teardown()
        if let fd = storageLock.withLock({ l in defer { l = nil }; return l }) { close(fd) }
    }
}

/// What `NetnsFarm.start` has started so far, to stop (latest first) when a later step fails.
final class StartedProcesses {
    private var stops: [() -> Void] = []
    func add(_ stop: @escaping () -> Void) { stops.append(stop) }
    func stopAll() {
        for stop in stops.reversed() { stop() }
        stops = []
    }
}

/// The farm's CA and the server certificates of its TLS hosts, made with openssl (EC P-256).
/// A server certificate is for client use too: etcd's JSON gateway dials etcd's own gRPC
/// port with it. No certificate has a common name: etcd's gateway answers 400 to a client
/// certificate with one.
struct FarmPKI {
    let dir: URL
    let ca: String

    init(dir: URL, name: String = "kiln-multihost-test-ca") throws {
        self.dir = dir
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        ca = dir.appendingPathComponent("ca.pem").path
        try Self.openssl(["req", "-x509"] + Self.curve + ["-keyout", dir.appendingPathComponent("ca.key").path, "-out", ca, "-days", "2", "-subj", "/CN=\(name)"])
    }

    static let curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    static func openssl(_ arguments: [String]) throws {
        let r = try Spawn.run("/usr/bin/openssl", arguments)
        guard r.status == 0 else { throw FarmError("openssl \(arguments.joined(separator: " ")) failed: \(String(decoding: r.output, as: UTF8.self))") }
    }

    /// `server.pem` and `server.key` for `name` and `address` (and loopback) into `folder`.
    func issue(name: String, address: String, into folder: URL, aliases: [String] = []) throws {
        let key = folder.appendingPathComponent("server.key").path
        let csr = dir.appendingPathComponent("\(name).csr").path
        let ext = dir.appendingPathComponent("\(name).ext")
        try Self.openssl(["req"] + Self.curve + ["-keyout", key, "-out", csr, "-subj", "/O=kiln-test-server-\(name)"])
        try "subjectAltName=DNS:\(name),\(aliases.map { "DNS:\($0)," }.joined())IP:\(address),IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n".write(to: ext, atomically: true, encoding: .utf8)
        try Self.openssl(["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", dir.appendingPathComponent("ca.key").path, "-CAcreateserial",
                          "-out", folder.appendingPathComponent("server.pem").path, "-days", "2", "-extfile", ext.path])
        chmod(key, 0o600)
    }

    /// `client.pem` and `client.key` (client use only) into `folder`. No common name: etcd's
    /// JSON gateway answers 400 to a client certificate with one ("CommonName of client sending
    /// a request against gateway will be ignored").
    func issueClient(name: String, into folder: URL) throws {
        let key = folder.appendingPathComponent("client.key").path
        let csr = dir.appendingPathComponent("client-\(name).csr").path
        let ext = dir.appendingPathComponent("client-\(name).ext")
        try Self.openssl(["req"] + Self.curve + ["-keyout", key, "-out", csr, "-subj", "/O=kiln-test-client-\(name)"])
        try "extendedKeyUsage=clientAuth\n".write(to: ext, atomically: true, encoding: .utf8)
        try Self.openssl(["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", dir.appendingPathComponent("ca.key").path, "-CAcreateserial",
                          "-out", folder.appendingPathComponent("client.pem").path, "-days", "2", "-extfile", ext.path])
        chmod(key, 0o600)
    }
}
