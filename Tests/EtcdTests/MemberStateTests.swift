import AsyncHTTPClient
@testable import Etcd
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Which member a client of several uses, how `--etcd` is read, and how a failed call is
/// sorted: without etcd.
@Suite("etcd members, without etcd")
struct MemberStateTests {
    @Test func callsGoToTheFirstMemberUntilItFails() {
        var state = MemberState(count: 3)
        #expect(state.next(excluding: []) == 0)
        state.failed(0)
        #expect(state.current == 1)
        #expect(state.next(excluding: []) == 1, "later calls start at the next member")
        #expect(state.next(excluding: [0]) == 1)
    }

    @Test func manyCallsFailingOnOneMemberMoveOnOnce() {
        var state = MemberState(count: 3)
        // Three calls were all on member 0 when it died; each reports it.
        state.failed(0)
        state.failed(0)
        state.failed(0)
        #expect(state.current == 1, "not skipped past the healthy member 1")
        // A late report about a member that is no longer the current one changes nothing.
        state.failed(2)
        #expect(state.current == 1)
    }

    @Test func aCallTriesEachMemberOnceThenGivesUp() {
        var state = MemberState(count: 3)
        var tried = Set<Int>()
        var order: [Int] = []
        while let member = state.next(excluding: tried) {
            tried.insert(member)
            order.append(member)
            state.failed(member)
        }
        #expect(order == [0, 1, 2])
        #expect(state.current == 0, "wraps around: the first member is tried first again")
    }

    @Test func aCallStartedBeforeAnotherMovedOnGoesToTheNewCurrentMember() {
        var state = MemberState(count: 3)
        // Call A is on member 0; call B found 0 dead and moved the client to 1; B then failed on 1 too.
        state.failed(0)
        state.failed(1)
        #expect(state.current == 2)
        // A fails on 0 now: it goes on to 2 (current), not to 1 (after the one it tried).
        state.failed(0)
        #expect(state.next(excluding: [0]) == 2)
    }

    @Test func aLoneMemberIsAlwaysTheOne() {
        var state = MemberState(count: 1)
        state.failed(0)
        #expect(state.current == 0)
        #expect(state.next(excluding: [0]) == nil)
    }

    @Test func onlyCallsThatCannotHaveBeenAppliedOrThatReadAreRepeated() {
        #expect(MemberState.retries(.notSent, idempotent: false))
        #expect(MemberState.retries(.notSent, idempotent: true))
        #expect(MemberState.retries(.noAnswer, idempotent: true))
        #expect(!MemberState.retries(.noAnswer, idempotent: false), "a write whose connection broke may have been applied")
    }

    @Test func failuresBeforeAConnectionAreNotSent() {
        #expect(CallFailure.of(IOError(errnoCode: ECONNREFUSED, reason: "connect")) == .notSent)
        #expect(CallFailure.of(ChannelError.connectTimeout(.seconds(3))) == .notSent)
        #expect(CallFailure.of(ChannelError.ioOnClosedChannel) == .notSent)
        #expect(CallFailure.of(HTTPClientError.connectTimeout) == .notSent)
        #expect(CallFailure.of(HTTPClientError.remoteConnectionClosed) == .noAnswer)
        #expect(CallFailure.of(HTTPClientError.readTimeout) == .noAnswer)
        #expect(CallFailure.of(HTTPClientError.deadlineExceeded) == .noAnswer)
        #expect(CallFailure.of(IOError(errnoCode: ECONNRESET, reason: "read")) == .noAnswer)
        #expect(CallFailure.of(status: 503, grpcCode: 14, message: "etcdserver: no leader") == .notSent)
        #expect(CallFailure.of(status: 200, grpcCode: nil, message: "no leader") == nil)
        #expect(CallFailure.of(status: 503, grpcCode: 14, message: "etcdserver: leader changed") == .noAnswer)
        #expect(CallFailure.of(status: 503, grpcCode: 14, message: "etcdserver: request timed out, possibly due to previous leader failure") == .noAnswer)
        #expect(CallFailure.of(status: 400, grpcCode: 3, message: "etcdserver: key is not provided") == nil, "a refusal any member would repeat")
        #expect(CallFailure.of(status: 403, grpcCode: 7, message: "etcdserver: permission denied") == nil)
        #expect(CallFailure.of(status: 500, grpcCode: 8, message: "etcdserver: mvcc: database space exceeded") == nil)
    }

    @Test func etcdOptionTakesOneURLOrSeveral() {
        #expect(EtcdClient.parseEndpoints("http://127.0.0.1:2379") == ["http://127.0.0.1:2379"])
        #expect(EtcdClient.parseEndpoints("https://a:2379/, https://b:2379 ,https://c:2379,") == ["https://a:2379", "https://b:2379", "https://c:2379"])
        #expect(EtcdClient.parseEndpoints(" , ").isEmpty)
        let client = EtcdClient(endpoint: "http://127.0.0.1:1,http://127.0.0.1:2")
        #expect(client.endpoints == ["http://127.0.0.1:1", "http://127.0.0.1:2"])
        #expect(client.endpoint == "http://127.0.0.1:1")
    }

    @Test func aListOfMembersIsCheckedWhole() {
        let none = #expect(throws: EtcdError.self) { try EtcdClient.checkEndpoints([], tls: nil) }
        #expect(none?.message.contains("--etcd") == true)
        let twice = #expect(throws: EtcdError.self) { try EtcdClient.checkEndpoints(["http://127.0.0.1:1", "http://127.0.0.1:1"], tls: nil) }
        #expect(twice?.message.contains("twice") == true)
        let offLoopback = #expect(throws: EtcdError.self) { try EtcdClient.checkEndpoints(["http://127.0.0.1:1", "http://10.0.0.5:2379"], tls: nil) }
        #expect(offLoopback?.message.contains("10.0.0.5") == true, "one member in clear off this machine spoils the list")
        #expect(throws: Never.self) { try EtcdClient.checkEndpoints(["https://etcd-1:2379", "https://etcd-2:2379"], tls: EtcdTLS(caFile: "/ca.pem")) }
    }

    @Test func quotaFromEtcdsMetrics() {
        let page = """
            # HELP etcd_server_quota_backend_bytes Current backend storage quota size in bytes.
            # TYPE etcd_server_quota_backend_bytes gauge
            etcd_server_quota_backend_bytes 2.147483648e+09
            etcd_server_quota_backend_bytes_other 5
            """
        #expect(EtcdClient.quotaBytes(metrics: page) == 2_147_483_648)
        #expect(EtcdClient.quotaBytes(metrics: "etcd_server_quota_backend_bytes 2e+07\n") == 20_000_000)
        #expect(EtcdClient.quotaBytes(metrics: "etcd_server_has_leader 1\n") == nil)
        #expect(EtcdClient.quotaBytes(metrics: "etcd_server_quota_backend_bytes NaN\n") == nil)
    }

    @Test func defragmentationGoesFollowersFirstAndRefusesWithAMemberDown() throws {
        func status(_ id: String, leader: String) -> EtcdMemberStatus {
            EtcdMemberStatus(endpoint: "e\(id)", memberID: id, leaderID: leader, version: "3.4.23", dbSizeBytes: 1, dbSizeInUseBytes: 1, revision: 1)
        }
        let planned = try DefragmentationPlan.order([("e1", status("1", leader: "1")), ("e2", status("2", leader: "1")), ("e3", status("3", leader: "1"))]).get()
        #expect(planned == ["e2", "e3", "e1"])
        let refused = DefragmentationPlan.order([("e1", status("1", leader: "1")), ("e2", nil), ("e3", status("3", leader: "1"))])
        guard case .failure(let why) = refused else {
            Issue.record("defragmentation planned with a member down")
            return
        }
        #expect(why.reason.contains("e2 does not answer"))
    }
}
