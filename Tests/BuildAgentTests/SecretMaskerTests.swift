@testable import BuildAgent
import KilnCore
import Testing

@Suite("SecretMasker: every value a build received is [masked] in its log, however the output comes")
struct SecretMaskerTests {
    static let token = "tok-3f9a1c77e2"

    @Test("a value is masked wherever it appears, as often as it appears")
    func wholeText() {
        let masker = SecretMasker(values: [Self.token])
        #expect(masker.masked("token=\(Self.token)") == "token=[masked]")
        #expect(masker.masked("\(Self.token)\(Self.token) and \(Self.token).") == "[masked][masked] and [masked].")
        #expect(masker.masked("tok-3f9a1c77e") == "tok-3f9a1c77e", "a prefix alone is not the value")
        #expect(SecretMasker(values: []).masked("anything") == "anything")
        #expect(SecretMasker(values: [""]).isEmpty, "an empty value masks nothing rather than everything")
    }

    @Test("the longest value wins over one inside it, and overlapping values are masked together")
    func longestAndOverlapping() {
        let masker = SecretMasker(values: ["secret-value-1", "value-1"])
        #expect(masker.masked("a secret-value-1 b value-1") == "a [masked] b [masked]")
        // "AAAAXXXX" and "XXXXBBBB" overlap in "AAAAXXXXBBBB": no part of either is left.
        let overlap = SecretMasker(values: ["AAAAXXXX", "XXXXBBBB"])
        #expect(overlap.masked("<AAAAXXXXBBBB>") == "<[masked]>")
        #expect(overlap.masked("AAAAXXXX XXXXBBBB") == "[masked] [masked]")
    }

    @Test("a value cut anywhere across two pieces of the stream is masked, and nothing else is held")
    func splitAcrossPieces() {
        let values = [Self.token, "AAAAXXXX", "XXXXBBBB", "multi\nline-secret"]
        let text = "start \(Self.token) mid AAAAXXXXBBBB then multi\nline-secret end tok-3f9"
        let whole = SecretMasker(values: values).masked(text)
        #expect(!whole.contains(Self.token) && !whole.contains("XXXX") && !whole.contains("line-secret"))
        let bytes = Array(text.utf8)
        let longest = values.map(\.utf8.count).max()!
        for cut in 0...bytes.count {
            var masker = SecretMasker(values: values)
            let first = masker.feed(String(decoding: bytes[..<cut], as: UTF8.self))
            #expect(masker.heldBack <= longest - 1)
            let out = first + masker.feed(String(decoding: bytes[cut...], as: UTF8.self)) + masker.finish()
            #expect(out == whole, "cut at \(cut)")
        }
        // Byte by byte too.
        var masker = SecretMasker(values: values)
        let out = text.map { masker.feed(String($0)) }.joined() + masker.finish()
        #expect(out == whole)
    }

    @Test("text that cannot begin a value is let through at once; the possible beginning of one is held")
    func holdsOnlyWhatCouldBeAValue() {
        var masker = SecretMasker(values: [Self.token])
        #expect(masker.feed("plain line\n") == "plain line\n")
        #expect(masker.heldBack == 0)
        #expect(masker.feed("ends with tok-3f") == "ends with ")
        #expect(masker.heldBack == "tok-3f".utf8.count)
        #expect(masker.feed("9a1c77e2 done") == "[masked] done")
        #expect(masker.feed("tok-") == "")
        #expect(masker.finish() == "tok-", "at the end what was held goes out as it is")
    }

    @Test("each line of a multi-line value is masked on its own: a build that prints one line of a key")
    func linesOfAKey() {
        let key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nshort\n-----END KEY-----\n"
        let masker = SecretMasker(values: [key])
        #expect(masker.masked("line: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC") == "line: [masked]")
        #expect(masker.masked("short") == "short", "lines under \(SecretRules.minimumLength) characters are not masked alone")
        #expect(masker.masked("k=" + key + "next") == "k=[masked]\nnext", "the line break at the value's end stays")
    }

    @Test("LogBuffer: output masked as one stream across lines, agent lines whole, in order")
    func logBuffer() {
        let buffer = LogBuffer()
        buffer.output("fetch output")
        buffer.mask(["first-line\nsecond-line", Self.token])
        buffer.output("a first-line")
        buffer.output("second-line b")
        buffer.output("ends with tok-3f9")
        buffer.append("==> compile succeeded, token \(Self.token)")
        buffer.output("after")
        buffer.appendSummary()
        #expect(buffer.take() == [
            "fetch output",
            "a [masked] b",
            "ends with tok-3f9",
            "==> compile succeeded, token [masked]",
            "after",
        ])
        #expect(buffer.masked("error: \(Self.token)") == "error: [masked]")
    }
}
