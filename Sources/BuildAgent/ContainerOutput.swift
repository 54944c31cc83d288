import DockerAPI
import Foundation
import KilnCore

/// Streams a started container's output to `log` until the container has ended.
///
/// The follow stream normally ends when the container does. podman 4.3's compat `logs
/// ?follow=1` can miss that end for a container that exits within milliseconds of starting:
/// seen in the events log here, a compile step `ln -s …` started at .326 and died at .327,
/// and the stream stayed open until the step's time limit two minutes later. So the follow
/// races a check of the container's state (one inspect a second): once the container has
/// been stopped for 2 s with the stream still open, the stream is dropped and the output read
/// again without follow, skipping the lines already logged.
func followOutput(of id: String, docker: DockerClient, log: @escaping @Sendable (String) -> Void) async throws {
    let logged = Locked(0)
    let streamEnded = try await withThrowingTaskGroup(of: Bool.self) { group in
        group.addTask {
            for try await line in docker.logs(id, follow: true) {
                log(line)
                logged.withLock { $0 += 1 }
            }
            return true
        }
        group.addTask {
            var stoppedChecks = 0
            while stoppedChecks < 3 {
                try await Task.sleep(for: .seconds(1))
                let running = (try? await docker.state(of: id))?.running ?? true
                stoppedChecks = running ? 0 : stoppedChecks + 1
            }
            return false
        }
        defer { group.cancelAll() }
        return try await group.next() ?? true
    }
    if streamEnded { return }
    let skip = logged.withLock { $0 }
    var index = 0
    for try await line in docker.logs(id, follow: false) {
        index += 1
        if index > skip { log(line) }
    }
}
