/// Range reads with etcd's options: a limit, an order, keys only, a count only.
///
/// What each costs on etcd 3.4 (its `applierV3backend.Range` and mvcc's `rangeKeys`): every
/// read first walks etcd's in-memory key index over the whole range (that is how the answer's
/// `count` is the range's, whatever the limit), then loads the values of the keys it returns:
/// - no order (etcd's own: ascending by key) with a limit loads `limit + 1` values;
/// - `countOnly` loads no value;
/// - `keysOnly` saves the transfer, not the load: etcd still reads every value it returns;
/// - ANY order (even ascending) makes etcd load every value of the range, sort, then cut to
///   the limit. A descending read "with a limit" of a large prefix is therefore a full scan
///   inside etcd: order only small ranges, and page large ones without an order.
extension EtcdClient {
    /// How a range is read. The defaults read the whole range in key order.
    public struct RangeOptions: Sendable, Equatable {
        public enum Order: String, Sendable {
            case ascending = "ASCEND"
            case descending = "DESCEND"
        }

        /// At most this many keys (`more` says whether there were others).
        public var limit: Int?
        /// Sorted by key in this order; nil is etcd's own order (ascending), which alone lets
        /// a limit stop the read early.
        public var order: Order?
        /// Keys without their values.
        public var keysOnly: Bool
        /// Only how many keys there are (`count`), no keys at all.
        public var countOnly: Bool

        public init(limit: Int? = nil, order: Order? = nil, keysOnly: Bool = false, countOnly: Bool = false) {
            self.limit = limit
            self.order = order
            self.keysOnly = keysOnly
            self.countOnly = countOnly
        }
    }

    /// The keys in [key, rangeEnd) read as `options` say (`rangeEnd` nil: only `key`; "\0":
    /// every key from `key` on).
    public func range(key: String, rangeEnd: String?, options: RangeOptions) async throws -> RangeResult {
        try await range(key: Array(key.utf8), rangeEnd: rangeEnd.map { Array($0.utf8) }, options: options)
    }

    /// Every key that starts with `prefix`, read as `options` say.
    public func range(prefix: String, options: RangeOptions) async throws -> RangeResult {
        let key = Array(prefix.utf8)
        return try await range(key: key, rangeEnd: Wire.prefixEnd(key), options: options)
    }

    /// How many keys start with `prefix`: etcd counts them in its index without reading one.
    public func count(prefix: String) async throws -> Int64 {
        try await range(prefix: prefix, options: RangeOptions(countOnly: true)).count
    }

    /// The end of the range of every key that starts with `prefix`, for a range of your own
    /// from a key under it to its end. `prefix` must be ASCII (every Kiln key is): the end of
    /// other text may not be text.
    public static func prefixEnd(_ prefix: String) -> String {
        String(decoding: Wire.prefixEnd(Array(prefix.utf8)), as: UTF8.self)
    }

    func range(key: [UInt8], rangeEnd: [UInt8]?, options: RangeOptions) async throws -> RangeResult {
        let request = Wire.RangeRequestWithOptions(
            key: Wire.base64(key),
            rangeEnd: rangeEnd.map(Wire.base64),
            limit: options.limit.map(String.init),
            sortOrder: options.order?.rawValue,
            sortTarget: options.order == nil ? nil : "KEY",
            keysOnly: options.keysOnly ? true : nil,
            countOnly: options.countOnly ? true : nil)
        return try await call("/v3/kv/range", request, as: Wire.RangeResponse.self,
                              access: "read \(String(decoding: key, as: UTF8.self))\(rangeEnd == nil ? "" : "…")").result
    }
}

extension Wire {
    struct RangeRequestWithOptions: Encodable {
        var key: String
        var rangeEnd: String?
        var limit: String?
        var sortOrder: String?
        var sortTarget: String?
        var keysOnly: Bool?
        var countOnly: Bool?
        enum CodingKeys: String, CodingKey {
            case key, limit
            case rangeEnd = "range_end", sortOrder = "sort_order", sortTarget = "sort_target"
            case keysOnly = "keys_only", countOnly = "count_only"
        }
    }
}
