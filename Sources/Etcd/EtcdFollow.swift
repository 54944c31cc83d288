import Logging

/// The one way to follow a prefix: an `AsyncSequence` of ``WatchUpdate``s whose first element
/// is `.reset` with every key under the prefix and the revision they were read at, followed by
/// the prefix's changes after that revision, until the consuming task is cancelled or stops
/// iterating. Made by ``EtcdClient/follow(prefix:)``.
///
/// A consumer keeps its view with two cases: `.reset` replaces the view (``PrefixView`` does
/// it for a plain dictionary), `.events` are applied in order. A `.reset` comes again whenever
/// the follow could not go on from where it was: the watch's revision was compacted (see
/// ``EtcdWatch``), or the watch or a read failed; then it reads the whole prefix again after
/// the ``Backoff`` wait (100 ms doubling to 2 s). A connection that merely dropped resumes
/// without a `.reset`. The decisions are ``FollowState``'s.
///
/// It never throws and never ends by itself: a failure is logged (a warning for the first in
/// a row) and retried. After the consuming task is cancelled, `next()` returns nil at once
/// and the watch's connection is closed. Each iteration reads and watches on its own.
public struct EtcdFollow: AsyncSequence, Sendable {
    public typealias Element = WatchUpdate
    public typealias Failure = Never

    let client: EtcdClient
    let prefix: String

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(follow: self)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        public typealias Failure = Never

        private let follow: EtcdFollow
        private var logger: Logger
        private var state = FollowState()
        /// The watch since the last read. Dropping it closes its connection.
        private var watch: EtcdWatch.AsyncIterator?
        private var finished = false

        init(follow: EtcdFollow) {
            self.follow = follow
            var logger = follow.client.logger
            logger[metadataKey: "etcd.follow.prefix"] = .string(follow.prefix)
            self.logger = logger
        }

        public mutating func next() async -> WatchUpdate? {
            while !finished {
                if Task.isCancelled { return end() }
                switch state.step {
                case .read:
                    do {
                        let current = try await follow.client.range(prefix: follow.prefix)
                        if state.failures > 0 {
                            logger.info("prefix read again", metadata: ["etcd.revision": "\(current.revision)"])
                        }
                        state.didRead(revision: current.revision)
                        return .reset(current.kvs, revision: current.revision)
                    } catch {
                        failed("could not read the prefix: \(error)")
                    }
                case .wait(let wait):
                    do { try await Task.sleep(for: wait) } catch { return end() }
                    state.waited()
                case .watch(let revision):
                    if watch == nil {
                        watch = follow.client.watch(prefix: follow.prefix, fromRevision: revision).makeAsyncIterator()
                    }
                    do {
                        if let update = try await watch!.next() {
                            state.delivered()
                            return update
                        }
                        // A watch ends only when its task is cancelled, which the loop checks.
                        failed("the watch ended")
                    } catch {
                        failed("the watch failed: \(error)")
                    }
                }
            }
            return nil
        }

        private mutating func end() -> WatchUpdate? {
            finished = true
            watch = nil
            return nil
        }

        private mutating func failed(_ reason: String) {
            watch = nil
            if Task.isCancelled {
                finished = true
                return
            }
            let wait = state.failed()
            let metadata: Logger.Metadata = ["retry.after": "\(wait)"]
            if state.failures == 1 {
                logger.warning("following the prefix: \(reason); reading it again", metadata: metadata)
            } else {
                logger.debug("following the prefix: \(reason)", metadata: metadata)
            }
        }
    }
}
