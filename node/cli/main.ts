console.log('picocloud')
