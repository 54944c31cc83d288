@testable import Etcd
import Foundation
import Testing

/// The watch's bookkeeping and line splitting, without etcd.
@Suite("etcd watch state")
struct WatchStateTests {
    func response(_ json: String) throws -> Wire.WatchResponse {
        let message = try Wire.decoder().decode(Wire.StreamMessage<Wire.WatchResponse>.self, from: Data(json.utf8))
        return try #require(message.result)
    }

    func put(_ key: String, _ rev: Int) -> String {
        #"{"kv":{"key":"\#(Wire.base64(key))","create_revision":"\#(rev)","mod_revision":"\#(rev)","version":"1","value":"eA=="}}"#
    }

    @Test func createdSetsTheResumeRevisionOnlyForAWatchFromNow() throws {
        var fromNow = WatchState(fromRevision: nil)
        #expect(fromNow.receive(try response(#"{"result":{"header":{"revision":"41"},"created":true}}"#)) == .none)
        #expect(fromNow.nextRevision == 42)

        var fromTen = WatchState(fromRevision: 10)
        _ = fromTen.receive(try response(#"{"result":{"header":{"revision":"41"},"created":true}}"#))
        #expect(fromTen.nextRevision == 10)
    }

    @Test func eventsAdvanceTheRevisionAndAreNeverRepeated() throws {
        var state = WatchState(fromRevision: 5)
        let batch = try response(#"{"result":{"header":{"revision":"9"},"events":[\#(put("/a", 5)),\#(put("/b", 6))]}}"#)
        guard case .yield(.events(let events, let revision)) = state.receive(batch) else {
            Issue.record("no events")
            return
        }
        #expect(events.map(\.kv.key) == ["/a", "/b"])
        // The last event's revision, not the header's (9: the store while catching up).
        #expect(revision == 6)
        #expect(state.nextRevision == 7)
        #expect(state.receive(batch) == .none)
    }

    @Test func progressNotificationsMoveTheResumeRevision() throws {
        var state = WatchState(fromRevision: 5)
        #expect(state.receive(try response(#"{"result":{"header":{"revision":"20"}}}"#)) == .none)
        #expect(state.nextRevision == 21)
        #expect(state.receive(try response(#"{"result":{"header":{"revision":"3"}}}"#)) == .none)
        #expect(state.nextRevision == 21)
    }

    @Test func compactionAsksForAResyncAndOtherCancelsFail() throws {
        var state = WatchState(fromRevision: 2)
        let compacted = try response(#"{"result":{"header":{},"canceled":true,"compact_revision":"7"}}"#)
        #expect(state.receive(compacted) == .resync)
        #expect(state.needsReset)
        state.didReset(revision: 30)
        #expect(!state.needsReset)
        #expect(state.nextRevision == 31)

        let other = try response(#"{"result":{"header":{},"canceled":true,"cancel_reason":"no"}}"#)
        #expect(state.receive(other) == .fail("no"))
        #expect(state.receive(error: Wire.StreamError(grpcCode: 14, message: "transport is closing")) == .reconnect)
        #expect(state.receive(error: Wire.StreamError(grpcCode: 7, message: "denied")) == .fail("denied"))
    }

    @Test func backoffDoublesToTwoSecondsAndResetsOnCreated() throws {
        var state = WatchState(fromRevision: 1)
        let delays = (0..<7).map { _ in state.disconnected() }
        #expect(delays == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .milliseconds(1600), .seconds(2), .seconds(2)])
        _ = state.receive(try response(#"{"result":{"header":{"revision":"1"},"created":true}}"#))
        #expect(state.disconnected() == .milliseconds(100))
    }

    @Test func linesAcrossAndWithinChunks() {
        var lines = LineSplitter()
        lines.append(Array(#"{"a":1}"#.utf8) + [10] + Array(#"{"b":"#.utf8))
        #expect(lines.nextLine().map { String(decoding: $0, as: UTF8.self) } == #"{"a":1}"#)
        #expect(lines.nextLine() == nil)
        lines.append(Array("2}\n\n{\"c\":3}\n{\"d\"".utf8))
        #expect(lines.nextLine().map { String(decoding: $0, as: UTF8.self) } == #"{"b":2}"#)
        #expect(lines.nextLine().map { String(decoding: $0, as: UTF8.self) } == #"{"c":3}"#)
        #expect(lines.nextLine() == nil)
        lines.append(Array(":4}".utf8))
        #expect(lines.nextLine() == nil)
        #expect(lines.remainder().map { String(decoding: $0, as: UTF8.self) } == #"{"d":4}"#)
        #expect(lines.remainder() == nil)
    }

    @Test func prefixEnds() {
        #expect(Wire.prefixEnd(Array("/a/".utf8)) == Array("/a0".utf8))
        #expect(Wire.prefixEnd([0x61, 0xff]) == [0x62])
        #expect(Wire.prefixEnd([0xff, 0xff]) == [0])
    }

    @Test func errorsMatchOnTheirKind() {
        let error = EtcdError.gateway("http://e", path: "/v3/lease/revoke", httpStatus: 404, grpcCode: 5, message: "etcdserver: requested lease not found")
        #expect(error == .leaseNotFound)
        #expect(error != .compacted)
        #expect(error.description.contains("http://e"))
        #expect(error.description.contains("404"))
        #expect(!error.isTransient)
        let closing = EtcdError.gateway("http://e", path: "/v3/lease/keepalive", httpStatus: 408, grpcCode: 1, message: "grpc: the client connection is closing")
        #expect(closing == .rejected)
        #expect(closing.isTransient)
        #expect(EtcdError.gateway("http://e", path: "/v3/kv/put", httpStatus: 400, grpcCode: 3, message: "bad").isTransient == false)
        switch error as any Error {
        case EtcdError.leaseNotFound: break
        default: Issue.record("pattern did not match")
        }
    }
}
