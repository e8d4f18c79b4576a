# An unmodified Ruby app, as an image author writes one: no lifecycle handler, no seed, no agent
# library. Its OpenSSL arrives with `require 'openssl'` (the extension `dlopen`s libssl after
# the process started: never in its global scope at start, as with .NET's shim). It warms up
# before the snapshot (one outbound TLS connection and a few draws), then serves plain HTTP.
# GET /probe opens an outbound TLS connection to the guest's ClientHello recorder (server name:
# ARGV[0]) and answers the next value of each generator a Ruby program commonly uses. The runtime
# clone test reads what went on the wire from the recorder. Single-threaded on purpose.

require 'json'
require 'openssl'
require 'securerandom'
require 'socket'

NAME = ARGV[0]
CONTEXT = OpenSSL::SSL::SSLContext.new
CONTEXT.verify_mode = OpenSSL::SSL::VERIFY_NONE

# One TLS handshake attempt; the recorder closes it after the ClientHello.
def hello
  tcp = TCPSocket.new('127.0.0.1', 8443)
  tls = OpenSSL::SSL::SSLSocket.new(tcp, CONTEXT)
  tls.hostname = NAME
  tls.connect
rescue StandardError
  nil
ensure
  begin
    tls&.close
  rescue StandardError
    nil
  end
  tcp&.close
end

# A generator's next eight draws: the test compares each clone's value with the others'.
def draws(&block)
  Array.new(8) { block.call }
end

def values
  {
    'OpenSSL::Random.random_bytes' => draws { OpenSSL::Random.random_bytes(16).unpack1('H*') },
    'SecureRandom.hex' => draws { SecureRandom.hex(16) },
    'Random.rand' => draws { Random.rand.to_s }
  }
end

CLAIMS = {
  'OpenSSL::Random.random_bytes' => 'safe',
  'SecureRandom.hex' => 'kernel',
  'Random.rand' => 'none'
}.freeze

hello
values
server = TCPServer.new('0.0.0.0', Integer(ENV.fetch('PORT')))
loop do
  client = server.accept
  begin
    request = client.gets
    while (header = client.gets) && header != "\r\n"; end
    body = if request && request.split[1] == '/probe'
             hello
             { runtime: "unmodified Ruby #{RUBY_VERSION}", values: values, claims: CLAIMS }
           else
             { ok: true }
           end
    data = JSON.generate(body)
    client.write("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" \
                 "content-length: #{data.bytesize}\r\nconnection: close\r\n\r\n#{data}")
  rescue StandardError
    nil
  ensure
    client.close
  end
end
