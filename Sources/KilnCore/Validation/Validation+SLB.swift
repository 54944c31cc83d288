import Foundation

extension Validation {
    /// A domain name nginx can serve: lowercase labels of letters, digits and '-', dot-separated.
    public static func domain(_ d: String) throws {
        func bad(_ why: String) -> KilnError { KilnError.invalid("domain '\(printable(d))' is refused: \(why); use a name such as demo.example.com or demo.localhost") }
        if d.isEmpty || d.utf8.count > 253 { throw bad("it must be 1 to 253 characters") }
        for label in d.split(separator: ".", omittingEmptySubsequences: false) {
            if label.isEmpty || label.count > 63 { throw bad("each dot-separated part must be 1 to 63 characters") }
            if label.hasPrefix("-") || label.hasSuffix("-") { throw bad("a part may not start or end with '-'") }
            if !label.utf8.allSatisfy({ isLower($0) || isDigit($0) || $0 == 45 }) { throw bad("only lowercase letters, digits, '-' and '.' are allowed") }
        }
    }

    /// An nginx group name: used as an etcd key component and a folder name.
    public static func groupName(_ g: String) throws { try projectName(g, what: "group name") }

    /// `host:port` with an IPv4 address or a host name, as nginx's `server` takes it.
    public static func serverAddress(_ a: String) throws {
        func bad(_ why: String) -> KilnError { KilnError.invalid("server '\(printable(a))' is refused: \(why); use host:port, such as 127.0.0.1:20001") }
        guard let colon = a.lastIndex(of: ":") else { throw bad("it has no port") }
        let host = a[..<colon], port = a[a.index(after: colon)...]
        guard port.utf8.allSatisfy(isDigit), let p = Int(port), (1...65535).contains(p) else { throw bad("the port must be 1 to 65535") }
        if host.isEmpty || host.utf8.count > 253 { throw bad("the host is empty or too long") }
        if !host.utf8.allSatisfy({ isLower($0) || isUpper($0) || isDigit($0) || $0 == 45 || $0 == 46 }) { throw bad("the host may hold only letters, digits, '-' and '.'") }
    }
}
