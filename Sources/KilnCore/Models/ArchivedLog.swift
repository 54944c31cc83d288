import Foundation

/// Where a build's log stands in the log archive (issue 14; docs/logs.md): the archive holds
/// its first `lines` lines, which are the lines of every chunk up to and including `through`
/// (in key order); chunks after `through` are still in etcd. The leader's archiver writes it
/// into the build record in the transaction that deletes the first archived chunks, so a
/// reader that finds a chunk gone finds this mark too.
///
/// Readers take exactly the first `lines` lines of the archive: a newer archive (a later
/// pipeline run added lines, and its mark is not written yet) only ever adds lines after them.
public struct ArchivedLog: Codable, Sendable, Equatable {
    /// When these lines were archived.
    public var archivedAt: Date
    /// How many lines of the archive this mark covers.
    public var lines: Int
    /// The name of the last archived chunk under the build's log prefix (`001-00000042`,
    /// `p001-00000003`): chunks named up to it are in the archive.
    public var through: String
    /// The archive's own name for the copy these lines are in, when it has one (the
    /// registry's manifest digest; nil for the folder archive): readers ask for exactly that
    /// copy, so a copy written later under the build's name (a deposed leader's late store,
    /// or anyone with push on the archive's repository) changes nothing they read.
    public var version: String?

    public init(archivedAt: Date, lines: Int, through: String, version: String? = nil) {
        self.archivedAt = archivedAt
        self.lines = lines
        self.through = through
        self.version = version
    }

    /// A mark a reader may trust: on a final build (the archiver marks no other), with a
    /// count and a chunk name of the form Kiln writes. Anything else (an agent may rewrite its
    /// running build's record) is ignored, and the build's chunks are read as they are.
    public func isPlausible(on build: Build) -> Bool {
        build.status.isFinal && lines >= 0 && ArchivedLog.isChunkName(through)
    }

    /// `NNN-NNNNNNNN` (an attempt's chunk) or `pNNN-NNNNNNNN` (a pipeline run's).
    public static func isChunkName(_ name: String) -> Bool {
        var bytes = Substring(name).utf8[...]
        if bytes.first == UInt8(ascii: "p") { bytes = bytes.dropFirst() }
        let parts = bytes.split(separator: UInt8(ascii: "-"), omittingEmptySubsequences: false)
        return parts.count == 2 && parts[0].count >= 3 && parts[1].count == 8
            && parts.allSatisfy { $0.allSatisfy { (48...57).contains($0) } }
    }
}
