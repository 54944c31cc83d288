#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// The JSON of etcd 3.4's gRPC gateway. Its quirks: keys and values are base64; 64-bit
// numbers are strings; fields that are zero, false or empty are left out (a PUT event has
// no "type", a failed txn no "succeeded", an empty range no "kvs" and no "count").
// Requests are encoded with explicit key names: the gateway wants "ID" and "TTL" verbatim.

enum Wire {
    static func base64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }
    static func base64(_ string: String) -> String { base64(Array(string.utf8)) }

    static func bytes(base64 text: String) -> [UInt8]? {
        guard let data = Data(base64Encoded: text) else { return nil }
        return [UInt8](data)
    }

    /// The end of the range of all keys that start with `prefix`: the prefix with its last
    /// byte that is not 0xff incremented and what follows dropped. All-0xff (or empty)
    /// prefixes have no such key, and "\0" means "to the end of the keyspace".
    static func prefixEnd(_ prefix: [UInt8]) -> [UInt8] {
        var end = prefix
        while let last = end.last {
            if last < 0xff {
                end[end.count - 1] = last + 1
                return end
            }
            end.removeLast()
        }
        return [0]
    }

    static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        // "create_revision" → createRevision; "ID", "TTL", "grantedTTL" have no underscore and stay.
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }

    // MARK: requests

    struct RangeRequest: Encodable {
        var key: String
        var rangeEnd: String?
        var limit: String?
        var revision: String?
        enum CodingKeys: String, CodingKey { case key, rangeEnd = "range_end", limit, revision }
    }

    struct PutRequest: Encodable {
        var key: String
        var value: String
        var lease: String?
    }

    struct DeleteRangeRequest: Encodable {
        var key: String
        var rangeEnd: String?
        enum CodingKeys: String, CodingKey { case key, rangeEnd = "range_end" }
    }

    struct CompareRequest: Encodable {
        var key: String
        var target: String
        var result: String
        var createRevision: String?
        var modRevision: String?
        var version: String?
        var value: String?
        var lease: String?
        enum CodingKeys: String, CodingKey {
            case key, target, result, version, value, lease
            case createRevision = "create_revision", modRevision = "mod_revision"
        }

        init(_ compare: Compare) {
            key = Wire.base64(compare.key)
            result = compare.result.rawValue
            switch compare.target {
            case .createRevision(let r): target = "CREATE"; createRevision = String(r)
            case .modRevision(let r): target = "MOD"; modRevision = String(r)
            case .version(let v): target = "VERSION"; version = String(v)
            case .value(let v): target = "VALUE"; value = Wire.base64(v)
            case .lease(let l): target = "LEASE"; lease = String(l)
            }
        }
    }

    struct RequestOp: Encodable {
        var requestRange: RangeRequest?
        var requestPut: PutRequest?
        var requestDeleteRange: DeleteRangeRequest?
        enum CodingKeys: String, CodingKey {
            case requestRange = "request_range", requestPut = "request_put", requestDeleteRange = "request_delete_range"
        }

        init(_ op: TxnOp) {
            switch op {
            case .put(let key, let value, let lease):
                requestPut = PutRequest(key: Wire.base64(key), value: Wire.base64(value), lease: lease.map(String.init))
            case .putBytes(let key, let value, let lease):
                requestPut = PutRequest(key: Wire.base64(key), value: Wire.base64(value), lease: lease.map(String.init))
            case .delete(let key):
                requestDeleteRange = DeleteRangeRequest(key: Wire.base64(key))
            case .deletePrefix(let prefix):
                requestDeleteRange = DeleteRangeRequest(key: Wire.base64(prefix), rangeEnd: Wire.base64(Wire.prefixEnd(Array(prefix.utf8))))
            case .get(let key):
                requestRange = RangeRequest(key: Wire.base64(key))
            case .getPrefix(let prefix):
                requestRange = RangeRequest(key: Wire.base64(prefix), rangeEnd: Wire.base64(Wire.prefixEnd(Array(prefix.utf8))))
            }
        }
    }

    struct TxnRequest: Encodable {
        var compare: [CompareRequest]
        var success: [RequestOp]
        var failure: [RequestOp]
    }

    struct LeaseGrantRequest: Encodable {
        var ttl: String
        enum CodingKeys: String, CodingKey { case ttl = "TTL" }
    }

    struct LeaseRequest: Encodable {
        var id: String
        enum CodingKeys: String, CodingKey { case id = "ID" }
    }

    struct CompactionRequest: Encodable {
        var revision: String
        var physical: Bool
    }

    struct Empty: Encodable {}

    struct WatchRequest: Encodable {
        struct Create: Encodable {
            var key: String
            var rangeEnd: String?
            var startRevision: String?
            var prevKv: Bool?
            var progressNotify: Bool?
            enum CodingKeys: String, CodingKey {
                case key, rangeEnd = "range_end", startRevision = "start_revision"
                case prevKv = "prev_kv", progressNotify = "progress_notify"
            }
        }
        var createRequest: Create
        enum CodingKeys: String, CodingKey { case createRequest = "create_request" }
    }

    // MARK: responses

    struct Header: Decodable {
        var revision: Int64
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            revision = try c.int64("revision")
        }
    }

    struct KV: Decodable {
        var kv: KeyValue
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            let key = try c.base64("key")
            kv = KeyValue(
                key: String(decoding: key, as: UTF8.self),
                value: try c.base64("value"),
                createRevision: try c.int64("createRevision"),
                modRevision: try c.int64("modRevision"),
                version: try c.int64("version"),
                lease: try c.int64("lease")
            )
        }
    }

    struct RangeResponse: Decodable {
        var header: Header
        var kvs: [KV]?
        var count: Int64
        var more: Bool
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            header = try c.decode(Header.self, forKey: "header")
            kvs = try c.decodeIfPresent([KV].self, forKey: "kvs")
            count = try c.int64("count")
            more = try c.decodeIfPresent(Bool.self, forKey: "more") ?? false
        }
        var result: RangeResult {
            RangeResult(kvs: (kvs ?? []).map(\.kv), revision: header.revision, count: count, more: more)
        }
    }

    struct HeaderOnly: Decodable {
        var header: Header
    }

    struct DeleteRangeResponse: Decodable {
        var header: Header
        var deleted: Int64
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            header = try c.decode(Header.self, forKey: "header")
            deleted = try c.int64("deleted")
        }
    }

    struct ResponseOp: Decodable {
        var result: TxnOpResult
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            if let range = try c.decodeIfPresent(RangeResponseInTxn.self, forKey: "responseRange") {
                result = .get(kvs: (range.kvs ?? []).map(\.kv), count: range.count)
            } else if let delete = try c.decodeIfPresent(DeleteInTxn.self, forKey: "responseDeleteRange") {
                result = .delete(deleted: delete.deleted)
            } else {
                result = .put
            }
        }
    }

    /// A range response inside a txn has a header with only a revision; kvs and count as usual.
    struct RangeResponseInTxn: Decodable {
        var kvs: [KV]?
        var count: Int64
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            kvs = try c.decodeIfPresent([KV].self, forKey: "kvs")
            count = try c.int64("count")
        }
    }

    struct DeleteInTxn: Decodable {
        var deleted: Int64
        init(from decoder: any Decoder) throws {
            deleted = try decoder.container(keyedBy: AnyKey.self).int64("deleted")
        }
    }

    struct TxnResponse: Decodable {
        var header: Header
        var succeeded: Bool
        var responses: [ResponseOp]
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            header = try c.decode(Header.self, forKey: "header")
            succeeded = try c.decodeIfPresent(Bool.self, forKey: "succeeded") ?? false
            responses = try c.decodeIfPresent([ResponseOp].self, forKey: "responses") ?? []
        }
    }

    /// Lease grant, the `result` of a keep-alive, and time-to-live all carry ID and TTL.
    struct LeaseResponse: Decodable {
        var id: Int64
        var ttl: Int64
        var error: String?
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            id = try c.int64("ID")
            ttl = try c.int64("TTL")
            error = try c.decodeIfPresent(String.self, forKey: "error")
        }
    }

    /// One message of a streaming call (watch, lease keep-alive): a result or an error.
    struct StreamMessage<Result: Decodable>: Decodable {
        var result: Result?
        var error: StreamError?
    }

    struct StreamError: Decodable {
        var grpcCode: Int?
        var httpCode: Int?
        var message: String?
        var httpStatus: String?
    }

    /// The body of an HTTP error answer of a unary call.
    struct ErrorBody: Decodable {
        var error: String?
        var message: String?
        var code: Int?
    }

    struct WatchResponse: Decodable {
        var header: Header?
        var created: Bool
        var canceled: Bool
        var compactRevision: Int64
        var cancelReason: String?
        var events: [Event]
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            header = try c.decodeIfPresent(Header.self, forKey: "header")
            created = try c.decodeIfPresent(Bool.self, forKey: "created") ?? false
            canceled = try c.decodeIfPresent(Bool.self, forKey: "canceled") ?? false
            compactRevision = try c.int64("compactRevision")
            cancelReason = try c.decodeIfPresent(String.self, forKey: "cancelReason")
            events = try c.decodeIfPresent([Event].self, forKey: "events") ?? []
        }
    }

    struct Event: Decodable {
        var event: WatchEvent
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            let type = try c.decodeIfPresent(String.self, forKey: "type")
            let kv = try c.decode(KV.self, forKey: "kv").kv
            let prev = try c.decodeIfPresent(KV.self, forKey: "prevKv")?.kv
            event = WatchEvent(kind: type == "DELETE" ? .delete : .put, kv: kv, prevKV: prev)
        }
    }
}

/// A coding key made from any string, for containers read field by field.
struct AnyKey: CodingKey, ExpressibleByStringLiteral {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
    init(stringLiteral value: String) { stringValue = value }
}

extension KeyedDecodingContainer where Key == AnyKey {
    /// A 64-bit number the gateway sends as a string (or, leniently, as a number); 0 if absent.
    func int64(_ key: AnyKey) throws -> Int64 {
        guard contains(key), try !decodeNil(forKey: key) else { return 0 }
        if let text = try? decode(String.self, forKey: key) {
            guard let value = Int64(text) else {
                throw DecodingError.dataCorruptedError(forKey: key, in: self, debugDescription: "not a 64-bit integer: \(text)")
            }
            return value
        }
        return try decode(Int64.self, forKey: key)
    }

    /// Base64 bytes; empty if absent.
    func base64(_ key: AnyKey) throws -> [UInt8] {
        guard let text = try decodeIfPresent(String.self, forKey: key) else { return [] }
        guard let bytes = Wire.bytes(base64: text) else {
            throw DecodingError.dataCorruptedError(forKey: key, in: self, debugDescription: "not base64")
        }
        return bytes
    }
}
