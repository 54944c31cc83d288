/// A piece of HTML that is safe to put into a page, because of how it can be made.
///
/// Written as a string literal, its literal text is markup (the source's own) and every
/// interpolated `String` is escaped for text and for quoted attributes (`& < > " '`):
///
///     let row: HTML = "<td title=\"\(build.error ?? "")\">\(build.ref)</td>"
///
/// An interpolated `HTML` goes in as it is (it was made the same way), and so does an `Int`.
/// Nothing else can be interpolated, so a value from data (a name, a ref, a log line, an
/// error) cannot reach a page unescaped unless someone writes `HTML(trusted:)`, which is kept
/// for the console's own CSS and script (a test checks that nothing else calls it).
///
/// Rule for callers: choose the type in conditional markup. In `\(ok ? "<b>x</b>" : "")`
/// the literals are Strings (Swift's default) and get escaped; give the value a type
/// (`let cell: HTML = ok ? "<b>x</b>" : ""`) so that they are markup.
struct HTML: Sendable, Equatable, ExpressibleByStringInterpolation {
    /// The markup, ready to send.
    fileprivate(set) var rendered: String

    /// Markup taken as it is, not escaped: only for the console's own assets, never for data.
    init(trusted markup: String) {
        rendered = markup
    }

    init(stringLiteral literal: String) {
        rendered = literal
    }

    init(stringInterpolation: StringInterpolation) {
        rendered = stringInterpolation.output
    }

    struct StringInterpolation: StringInterpolationProtocol {
        fileprivate var output = ""

        init(literalCapacity: Int, interpolationCount: Int) {
            output.reserveCapacity(literalCapacity + 16 * interpolationCount)
        }

        mutating func appendLiteral(_ literal: String) {
            output += literal
        }

        /// Text from anywhere: escaped.
        mutating func appendInterpolation(_ text: String) {
            output += HTML.escape(text)
        }

        /// A fragment made by this type: as it is.
        mutating func appendInterpolation(_ fragment: HTML) {
            output += fragment.rendered
        }

        /// A number: digits and a minus sign need no escaping.
        mutating func appendInterpolation(_ number: Int) {
            output += String(number)
        }
    }

    /// Escapes text for HTML text and for a double- or single-quoted attribute value.
    static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for c in text.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }
}

extension Sequence where Element == HTML {
    /// The fragments one after the other, with `separator` (markup) between them.
    func joined(separator: HTML = "") -> HTML {
        var out: HTML = ""
        for (i, fragment) in enumerated() {
            if i > 0 { out.rendered += separator.rendered }
            out.rendered += fragment.rendered
        }
        return out
    }
}
