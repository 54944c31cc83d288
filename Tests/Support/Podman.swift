import DockerAPI
import Foundation
import LocalFarm

/// Where the Docker tests keep podman's storage: reused across runs so the busybox image
/// is made once.
public let podmanTestRoot = URL(fileURLWithPath: "/var/tmp/kiln-test/podman")
public let busyboxImage = "localhost/kiln/busybox:1"

/// Starts podman's service on `root` (by default `podmanTestRoot`), makes the busybox image if
/// missing, runs `body` under a time limit and stops the service, whatever happened. The
/// suites that use one root are serialized: one service per root at a time; a suite that may
/// run beside another takes a root of its own. `insecureRegistries` ("127.0.0.1:PORT") are
/// spoken to over plain HTTP (`PodmanService.start`).
public func withPodman<T: Sendable>(
    root: URL = podmanTestRoot, insecureRegistries: [String] = [],
    timeout: Duration = .seconds(120),
    _ body: @escaping @Sendable (PodmanService, DockerClient) async throws -> T
) async throws -> T {
    let service = try await PodmanService.start(root: root, insecureRegistries: insecureRegistries)
    defer { service.stop() }
    try service.ensureBusyboxImage(busyboxImage)
    let docker = DockerClient(socketPath: service.socketPath)
    return try await withTimeout(timeout) { try await body(service, docker) }
}
