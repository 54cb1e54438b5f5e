(function(){ secrets.US
return this })()