import Foundation
import Hummingbird
import KilnCore
import Logging
import NIOCore

/// A build's log as text: what is there, or with `follow` (1, true, yes) a stream of it until
/// the build (and its pipeline run) has ended. The API and the console serve it alike, from
/// the archive and etcd (``SchedulerStore/logView(of:)``).
///
/// The log (or, when followed, its start) is read before the answer begins, so an archive
/// that cannot be read is a 503 or 500 with the reason, not a 200 cut short.
func logResponse(store: SchedulerStore, build id: String, follow: Substring?, logger: Logger) async throws -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "text/plain; charset=utf-8"
    let view = try await store.logView(of: id)
    guard ["1", "true", "yes"].contains(follow.map(String.init) ?? "") else {
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text(view.lines))))
    }
    let follower = LogFollower(store: store, build: id, logger: logger)
    return Response(status: .ok, headers: headers, body: ResponseBody { writer in
        for try await lines in follower.lines(from: view) {
            try await writer.write(ByteBuffer(string: text(lines)))
        }
        try await writer.finish(nil)
    })
}

private func text(_ lines: [String]) -> String {
    lines.map { $0 + "\n" }.joined()
}
