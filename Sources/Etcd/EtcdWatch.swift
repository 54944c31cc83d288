import AsyncHTTPClient
import Logging
import NIOCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A watch on a key or a prefix: an `AsyncSequence` of ``WatchUpdate``s that goes on until
/// the consuming task is cancelled or stops iterating.
///
/// Each iteration (each `makeAsyncIterator()`) opens its own stream (`POST /v3/watch`) and
/// holds one HTTP connection until it ends. When the connection drops (etcd restarted, the
/// network failed) it reconnects with a backoff (100 ms doubling to 2 s) and resumes after the
/// last revision it delivered, so no event is lost or repeated. A client of several members
/// reconnects to the next one (``MemberState``): a revision is the cluster's, so the watch
/// resumes there from where it was. When that revision was
/// compacted meanwhile, it reads the whole range and yields `.reset` before further events;
/// a consumer must handle `.reset` by replacing its view.
///
/// It throws only what retrying cannot fix: etcd canceled the watch for a reason other than
/// compaction, the gateway refused the request, or sent something that is not its JSON.
/// After the consuming task is cancelled, `next()` returns nil and the connection is closed.
public struct EtcdWatch: AsyncSequence, Sendable {
    public typealias Element = WatchUpdate

    let client: EtcdClient
    let key: [UInt8]
    let rangeEnd: [UInt8]?
    let fromRevision: Int64?
    let prevKV: Bool

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(watch: self)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        private let watch: EtcdWatch
        private var logger: Logger
        private var state: WatchState
        /// The open stream, if any. Dropping it ends the request and closes its connection.
        private var body: HTTPClientResponse.Body.AsyncIterator?
        private var lines = LineSplitter()
        /// Wait this long before the next connection attempt.
        private var delay: Duration?
        private var finished = false
        /// The token the open stream was made with (nil: anonymous or none yet).
        private var token: String?
        /// The member the open stream (or the last attempt) went to, an index into the
        /// client's endpoints.
        private var member = 0
        /// The token was renewed because etcd refused it, and no watch has been created since:
        /// a second refusal is final.
        private var renewedToken = false

        init(watch: EtcdWatch) {
            self.watch = watch
            self.state = WatchState(fromRevision: watch.fromRevision)
            var logger = watch.client.logger
            logger[metadataKey: "etcd.watch.key"] = .string(String(decoding: watch.key, as: UTF8.self))
            self.logger = logger
        }

        public mutating func next() async throws -> WatchUpdate? {
            while !finished {
                if Task.isCancelled { return end() }
                guard body != nil else {
                    if let wait = delay {
                        delay = nil
                        do { try await Task.sleep(for: wait) } catch { return end() }
                        continue
                    }
                    if state.needsReset {
                        if let update = try await resync() { return update }
                        continue
                    }
                    try await connect()
                    continue
                }
                if let line = lines.nextLine() {
                    if let update = try handle(line) { return update }
                    continue
                }
                let chunk: ByteBuffer?
                do {
                    chunk = try await body!.next()
                } catch {
                    if Task.isCancelled { return end() }
                    connectionLost("the stream failed: \(error)")
                    continue
                }
                if let chunk {
                    lines.append(chunk.readableBytesView)
                    continue
                }
                if Task.isCancelled { return end() }
                // End of stream. etcd that stops sends a last `{"error":…}` without a newline.
                var update: WatchUpdate?
                if let rest = lines.remainder() {
                    update = try handle(rest)
                }
                if body != nil {
                    connectionLost("the stream ended")
                }
                if let update { return update }
            }
            return nil
        }

        private mutating func end() -> WatchUpdate? {
            finished = true
            body = nil
            return nil
        }

        private mutating func fail(_ error: any Error) -> any Error {
            finished = true
            body = nil
            return error
        }

        /// Opens the stream from `state.nextRevision`.
        private mutating func connect() async throws {
            let client = watch.client
            let create = Wire.WatchRequest.Create(
                key: Wire.base64(watch.key),
                rangeEnd: watch.rangeEnd.map(Wire.base64),
                startRevision: state.nextRevision.map(String.init),
                prevKv: watch.prevKV ? true : nil,
                progressNotify: true
            )
            if let error = client.configurationError { throw fail(error) }
            do {
                token = try await client.token(replacing: renewedToken ? token : nil)
            } catch let error as EtcdError where error.isTransient {
                connectionLost("could not authenticate: \(error)", memberFailed: false)
                return
            } catch {
                if Task.isCancelled { _ = end(); return }
                throw fail(error)
            }
            member = client.members.current
            let endpoint = client.members.endpoints[member]
            let request = try client.makeRequest("/v3/watch", Wire.WatchRequest(createRequest: create), token: token, to: endpoint)
            let response: HTTPClientResponse
            do {
                // The deadline covers the whole stream, so it must be far away.
                response = try await client.httpClient.execute(request, timeout: .hours(24 * 365), logger: logger)
            } catch {
                if Task.isCancelled { _ = end(); return }
                connectionLost("could not connect to \(endpoint): \(error)")
                return
            }
            guard response.status.code == 200 else {
                let bytes = (try? await response.body.collect(upTo: 1 << 20)) ?? ByteBuffer()
                let error = client.gatewayError("/v3/watch", status: response.status.code, body: bytes, access: access, endpoint: endpoint)
                if error.isTransient {
                    connectionLost("\(error)")
                    return
                }
                throw fail(error)
            }
            if state.failures > 0 {
                logger.info("watch reconnected", metadata: ["etcd.revision": "\(state.nextRevision ?? 0)", "etcd.member": "\(endpoint)"])
            }
            body = response.body.makeAsyncIterator()
            lines = LineSplitter()
        }

        /// Reads the whole range and returns it as a reset, or nil to try again later.
        private mutating func resync() async throws -> WatchUpdate? {
            do {
                let range = try await watch.client.range(key: watch.key, rangeEnd: watch.rangeEnd)
                state.didReset(revision: range.revision)
                logger.info("watch resynced after compaction", metadata: ["etcd.revision": "\(range.revision)"])
                return .reset(range.kvs, revision: range.revision)
            } catch let error as EtcdError where error.isTransient {
                connectionLost("could not read the range to resync: \(error)", memberFailed: false)
                return nil
            } catch {
                if Task.isCancelled { return end() }
                throw fail(error)
            }
        }

        private mutating func handle(_ line: ArraySlice<UInt8>) throws -> WatchUpdate? {
            let message: Wire.StreamMessage<Wire.WatchResponse>
            do {
                message = try Wire.decoder().decode(Wire.StreamMessage<Wire.WatchResponse>.self, from: Data(line))
            } catch {
                throw fail(EtcdError.badResponse(
                    watch.client.members.endpoints[member], "/v3/watch: \(error); line: \(String(decoding: line.prefix(500), as: UTF8.self))"))
            }
            if let result = message.result, result.canceled, result.compactRevision == 0, let reason = result.cancelReason,
               let refusal = watch.client.authError(reason, httpStatus: nil, grpcCode: nil, access: access, endpoint: watch.client.members.endpoints[member]) {
                // A lapsed token is renewed and the watch made again at once, from where it was.
                if watch.client.session != nil, !renewedToken, EtcdClient.needsNewToken(reason) {
                    renewedToken = true
                    body = nil
                    logger.debug("watch refused the token; authenticating again")
                    return nil
                }
                throw fail(refusal)
            }
            let action: WatchState.Action
            if let result = message.result {
                if result.created && !result.canceled { renewedToken = false }
                action = state.receive(result)
            } else if let error = message.error {
                action = state.receive(error: error)
            } else {
                action = .none
            }
            switch action {
            case .none:
                return nil
            case .yield(let update):
                return update
            case .resync:
                logger.info("watch start revision was compacted; reading the range")
                body = nil
                return nil
            case .reconnect:
                connectionLost("etcd ended the stream: \(message.error?.message ?? "")")
                return nil
            case .fail(let reason):
                throw fail(EtcdError.watchCanceled(watch.client.members.endpoints[member], reason))
            }
        }

        /// What the watch needs, for a refusal's message.
        private var access: String {
            "read \(String(decoding: watch.key, as: UTF8.self))\(watch.rangeEnd == nil ? "" : "…") (a watch)"
        }

        /// The stream ended or could not be made. When its member failed (not a call that
        /// already moved on by itself), the client's next calls pass over it (a lone member is
        /// simply tried again).
        private mutating func connectionLost(_ reason: String, memberFailed: Bool = true) {
            body = nil
            if memberFailed { watch.client.members.failed(member) }
            let wait = state.disconnected()
            delay = wait
            let metadata: Logger.Metadata = [
                "etcd.revision": "\(state.nextRevision ?? 0)", "retry.after": "\(wait)",
            ]
            if state.failures == 1 {
                logger.warning("watch connection lost: \(reason); reconnecting", metadata: metadata)
            } else {
                logger.debug("watch reconnect failed: \(reason)", metadata: metadata)
            }
        }
    }
}
