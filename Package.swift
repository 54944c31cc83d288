// swift-tools-version:6.0
import PackageDescription

// Module layout, import rules and which file holds what: docs/architecture.md.
// Scheduler and BuildAgent never import each other; they meet in etcd through KilnCore.
let package = Package(
    name: "kiln",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "kiln", targets: ["kiln"]),
        // For Benchmarks/Package.swift (kiln-bench): the process-farm harness, and the
        // modules the benchmarks measure or read (the ring, the simulated agent's durations).
        .library(name: "FarmHarness", targets: ["FarmHarness", "KilnCore", "Etcd", "LocalFarm", "Scheduler", "BuildAgent"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.20.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.70.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.0"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.0"),
        // TLS to etcd (already in the graph through async-http-client).
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.27.0"),
    ],
    targets: [
        .target(
            name: "KilnCore"
        ),
        // The trust of Kiln's outgoing TLS connections (`--ca-file`: a CA added to the system's
        // roots) and the process-wide HTTP clients made with it: the CLI's API client, the
        // agent's secrets client, the scheduler's registry client (docs/tls.md).
        .target(
            name: "TLSTrust",
            dependencies: [
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // The client of the scheduler's HTTP API; its wire types are KilnCore's (API/), so
        // the scheduler does not need an HTTP client and the CLI does not need the scheduler.
        .target(
            name: "KilnClient",
            dependencies: [
                "KilnCore", "TLSTrust",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ]
        ),
        .target(
            name: "Etcd",
            dependencies: [
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // posix_spawn and waitpid, and long-running child processes stopped by PID (not
        // Foundation's Process, which never reaps a child where SIGCHLD is blocked).
        .target(name: "Processes"),
        // A Docker Engine API client over a unix socket (podman's or dockerd's): the
        // builders' container runtime and the local deploy backend's.
        .target(
            name: "DockerAPI",
            dependencies: [
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                // A retagged manifest's bytes hashed against its digest (DockerClient+Retag.swift).
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // Docker's registry token specification: ES256 JWTs signed by the scheduler (the token
        // service), the libtrust key id, scopes, and the signing key with its self-signed
        // certificate (the registry's rootcertbundle). Pure: no I/O but reading and writing PEM.
        .target(
            name: "RegistryAuth",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        // Issue 13: the secrets key file and AES-GCM sealing (`SecretsKeyring`), and the sealed
        // secrets in etcd (`SecretStore`): used by the scheduler, `kiln up` and `kiln secrets`.
        .target(
            name: "Sealing",
            dependencies: [
                // Plugins: the store is the pipeline's `PipelineSecrets`.
                "KilnCore", "Etcd", "Plugins",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .systemLibrary(name: "CLibGit2", pkgConfig: "libgit2", providers: [.apt(["libgit2-dev"])]),
        // gzip for the scheduler's log archive (Scheduler/Logs/Gzip.swift).
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // mount(2) and extended attributes for the agent's cache layers (Sandbox/CacheLayers.swift).
        .systemLibrary(name: "CLinuxFS"),
        .target(
            name: "Plugins",
            dependencies: ["KilnCore"]
        ),
        .target(
            name: "Scheduler",
            dependencies: [
                "KilnCore", "Etcd", "Plugins", "RegistryAuth", "Sealing", "CZlib", "TLSTrust",
                // SHA-256 of API tokens and sessions; scrypt for passwords.
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                // The registry's HTTP API (tags, manifests, deletes) for the console's image pages.
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                // Serving the API over TLS (`kiln scheduler --tls-cert/--tls-key`).
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            // The console's stylesheet and script, compiled into the binary
            // (PackageResources.console_css, .console_js): no resource folder at run time.
            resources: [.embedInCode("HTTP/Console/console.css"), .embedInCode("HTTP/Console/console.js")]
        ),
        .target(
            name: "BuildAgent",
            dependencies: [
                "KilnCore", "Etcd", "CLibGit2", "CLinuxFS", "DockerAPI", "Processes", "TLSTrust",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                // SHA-256 of a build's inputs (the reuse key, docs/reuse.md).
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "Deploy",
            dependencies: [
                "KilnCore", "Etcd", "Plugins", "DockerAPI", "Processes",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                // A Kubernetes cell's CA as the only trust root, and its client certificate.
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Starts and stops the real components of a one-machine farm (etcd, registry,
        // podman's API service, a Maven mirror, a git server): used by `kiln up` and the tests.
        .target(
            name: "LocalFarm",
            dependencies: [
                "Processes", "KilnCore", "Etcd", "Sealing", "TLSTrust",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "kiln",
            dependencies: [
                "KilnCore", "KilnClient", "Etcd", "Scheduler", "BuildAgent", "Plugins", "Deploy", "LocalFarm", "RegistryAuth", "DockerAPI", "Sealing", "TLSTrust",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Helpers shared by the test targets (timeouts, an etcd per test, waits on etcd, temp folders, HTTP).
        .target(
            name: "KilnTestSupport",
            dependencies: [
                "KilnCore", "Etcd", "DockerAPI", "LocalFarm", "Processes", "TLSTrust",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            path: "Tests/Support"
        ),
        // A farm of real processes (etcd, `kiln scheduler`, `kiln agent --simulate`) and the
        // "no build lost, none run twice" check: used by FarmTests and by kiln-bench.
        .target(
            name: "FarmHarness",
            dependencies: [
                "KilnCore", "Etcd", "LocalFarm", "KilnTestSupport", "RegistryAuth",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Tests/FarmHarness"
        ),
        .testTarget(name: "KilnCoreTests", dependencies: ["KilnCore"]),
        .testTarget(name: "SealingTests", dependencies: ["Sealing", "KilnCore", "Etcd", "LocalFarm", "KilnTestSupport"]),
        .testTarget(name: "RegistryAuthTests", dependencies: ["RegistryAuth", .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(name: "PluginsTests", dependencies: ["Plugins", "KilnCore"]),
        .testTarget(name: "EtcdTests", dependencies: ["Etcd", "LocalFarm", "KilnTestSupport", .product(name: "AsyncHTTPClient", package: "async-http-client")]),
        .testTarget(name: "BuildAgentTests", dependencies: [
            "BuildAgent", "LocalFarm", "Processes", "Etcd", "KilnCore", "DockerAPI", "KilnTestSupport", .product(name: "Logging", package: "swift-log"),
            .product(name: "Hummingbird", package: "hummingbird"), .product(name: "AsyncHTTPClient", package: "async-http-client"),
        ]),
        .testTarget(name: "DockerAPITests", dependencies: ["DockerAPI", "LocalFarm", "KilnTestSupport", .product(name: "AsyncHTTPClient", package: "async-http-client")]),
        .testTarget(name: "LocalFarmTests", dependencies: ["LocalFarm", "DockerAPI", "Processes", "KilnTestSupport", "KilnCore", "Etcd"]),
        .testTarget(
            name: "SchedulerTests",
            dependencies: [
                "Scheduler", "KilnClient", "LocalFarm", "Etcd", "KilnCore", "KilnTestSupport", "RegistryAuth", "Sealing", "TLSTrust",
                // The agent's secrets client against a scheduler serving TLS (SchedulerTLSTests).
                "BuildAgent", "DockerAPI",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ]
        ),
        .testTarget(
            name: "DeployTests",
            dependencies: [
                "Deploy", "Plugins", "LocalFarm", "Etcd", "KilnCore", "KilnTestSupport", "DockerAPI", "Sealing",
                .product(name: "Logging", package: "swift-log"),
                // The fake Kubernetes API server's TLS, and the CA and certificates the tests make.
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ]
        ),
        .testTarget(
            name: "FarmTests",
            dependencies: ["FarmHarness", "Scheduler", "LocalFarm", "Etcd", "KilnCore", "KilnTestSupport", "TLSTrust", "RegistryAuth"]),
        // Issue 17: the farm with its parts on separate hosts (network namespaces, NetnsFarm);
        // skipped where namespaces cannot be made. docs/testing-multihost.md.
        .testTarget(
            name: "MultiHostTests",
            dependencies: ["FarmHarness", "LocalFarm", "Etcd", "KilnCore", "KilnTestSupport"]),
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "Scheduler", "BuildAgent", "Deploy", "LocalFarm", "Etcd", "KilnCore", "KilnTestSupport", "RegistryAuth", "DockerAPI", "Sealing",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
