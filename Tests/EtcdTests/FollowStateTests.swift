@testable import Etcd
import Testing

/// The follow's decisions and the view it feeds, without etcd.
@Suite("etcd follow state")
struct FollowStateTests {
    @Test func readsFirstThenWatchesFromTheRevisionAfterTheRead() {
        var state = FollowState()
        #expect(state.step == .read)
        state.didRead(revision: 41)
        #expect(state.step == .watch(fromRevision: 42))
        // What the watch delivers changes nothing: the same watch goes on.
        state.delivered()
        #expect(state.step == .watch(fromRevision: 42))
    }

    @Test func aFailureWaitsThenReadsAgainBackingOffToTwoSeconds() {
        var state = FollowState()
        var waits: [Duration] = []
        for _ in 0..<7 {
            waits.append(state.failed())
            #expect(state.step == .wait(waits.last!))
            state.waited()
            #expect(state.step == .read)
        }
        #expect(waits == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .milliseconds(1600), .seconds(2), .seconds(2)])
        #expect(state.failures == 7)
    }

    @Test func aReadAloneKeepsTheBackoffADeliveryEndsIt() {
        var state = FollowState()
        _ = state.failed()
        state.waited()
        state.didRead(revision: 5)
        // The watch from 6 failed at once: the read did not prove that following works.
        #expect(state.failed() == .milliseconds(200))
        state.waited()
        state.didRead(revision: 7)
        state.delivered()
        #expect(state.failures == 0)
        #expect(state.failed() == .milliseconds(100))
    }

    func kv(_ key: String, _ value: String, _ revision: Int64) -> KeyValue {
        KeyValue(key: key, value: Array(value.utf8), createRevision: revision, modRevision: revision, version: 1)
    }

    @Test func aViewIsReplacedByAResetAndUpdatedByEvents() {
        var view = PrefixView()
        #expect(view.kvs.isEmpty && view.revision == 0)
        view.apply(.reset([kv("/p/a", "1", 3), kv("/p/b", "2", 4)], revision: 9))
        #expect(view.kvs == ["/p/a": kv("/p/a", "1", 3), "/p/b": kv("/p/b", "2", 4)])
        #expect(view.revision == 9)

        view.apply(.events([
            WatchEvent(kind: .put, kv: kv("/p/c", "3", 10)),
            WatchEvent(kind: .delete, kv: KeyValue(key: "/p/a", value: [], modRevision: 11)),
            WatchEvent(kind: .put, kv: kv("/p/b", "4", 11)),
        ], revision: 11))
        #expect(view.kvs == ["/p/b": kv("/p/b", "4", 11), "/p/c": kv("/p/c", "3", 10)])
        #expect(view.revision == 11)

        view.apply(.reset([kv("/p/z", "0", 20)], revision: 20))
        #expect(view == PrefixView([kv("/p/z", "0", 20)], revision: 20))
    }

    @Test func aViewSortsItsKeysAsEtcdDoesByTheirBytes() {
        // "é" composed (C3 A9) sorts after "z", and an upper case letter before a lower case one.
        let view = PrefixView([kv("/p/é", "", 1), kv("/p/b", "", 1), kv("/p/B", "", 1), kv("/p/z", "", 1), kv("/p/b/1", "", 1)], revision: 1)
        #expect(view.sorted.map(\.key) == ["/p/B", "/p/b", "/p/b/1", "/p/z", "/p/é"])
    }
}
