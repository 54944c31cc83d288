import DockerAPI
import Foundation
import LocalFarm

/// Where the Docker tests keep podman's storage: reused across runs so the busybox image
/// is made once.
public let podmanTestRoot = URL(fileURLWithPath: "/var/tmp/kiln-test/podman")
public let busyboxImage = "localhost/kiln/busybox:1"

/// Starts podman's service on `root` (by default `podmanTestRoot`), makes the busybox image if
/// missing, runs `body` under a time limit and stops the service, whatever happened. One
/// service per root at a time: a call waits (outside its time limit) while another test of
/// this process uses the same root, so suites of different targets that share a root do not
/// trip over each other when they run side by side. `insecureRegistries` ("127.0.0.1:PORT")
/// are spoken to over plain HTTP (`PodmanService.start`).
public func withPodman<T: Sendable>(
    root: URL = podmanTestRoot, insecureRegistries: [String] = [],
    timeout: Duration = .seconds(120),
    _ body: @escaping @Sendable (PodmanService, DockerClient) async throws -> T
) async throws -> T {
    let key = root.standardizedFileURL.path
    await PodmanRoots.shared.acquire(key)
    do {
        let result = try await withPodmanHeld(root: root, insecureRegistries: insecureRegistries, timeout: timeout, body)
        await PodmanRoots.shared.release(key)
        return result
    } catch {
        await PodmanRoots.shared.release(key)
        throw error
    }
}

private func withPodmanHeld<T: Sendable>(
    root: URL, insecureRegistries: [String], timeout: Duration,
    _ body: @escaping @Sendable (PodmanService, DockerClient) async throws -> T
) async throws -> T {
    let service = try await PodmanService.start(root: root, insecureRegistries: insecureRegistries)
    defer { service.stop() }
    try service.ensureBusyboxImage(busyboxImage)
    let docker = DockerClient(socketPath: service.socketPath)
    return try await withTimeout(timeout) { try await body(service, docker) }
}

/// The podman roots in use by this test process, each handed to one `withPodman` at a time,
/// in the order asked.
private actor PodmanRoots {
    static let shared = PodmanRoots()
    private var held: Set<String> = []
    private var waiting: [String: [CheckedContinuation<Void, Never>]] = [:]

    func acquire(_ root: String) async {
        if held.insert(root).inserted { return }
        await withCheckedContinuation { waiting[root, default: []].append($0) }
    }

    func release(_ root: String) {
        if var queue = waiting[root], !queue.isEmpty {
            let next = queue.removeFirst()
            waiting[root] = queue.isEmpty ? nil : queue
            next.resume()  // the root passes to the next caller, still held
        } else {
            held.remove(root)
        }
    }
}
